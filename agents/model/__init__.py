"""The LLM policy and what it is made of.

* :mod:`agents.model.policy`: :class:`~agents.model.policy.LLMPolicy`, a causal LM that writes
  catalogue items inside the prefix tree;
* :mod:`agents.model.kvcache`: decoding KV caches (reserved room, shared prompts);
* :mod:`agents.model.adapters`: LoRA, frozen trunks, trainable new-token rows;
* :mod:`agents.model.pretrained`: named offline models (smollm2-135m);
* :mod:`agents.model.encoders`: sentence and LM encoders, SIDs for a dataset.
"""
