"""Dimension glossary, used in shape comments all over pcjax.

====  ===========================================================
L     transformer layers
B     sequences in a step (padded to a bucket)
T     query tokens in a step, flattened over sequences (bucketed)
Q     max query tokens of one sequence in a step (static bucket)
S     kv tokens of one sequence (M * P after gathering its pages)
D     model (hidden) dim
F     MLP intermediate dim
N     query heads
K     key/value heads (N % K == 0; G = N // K queries per kv head)
H     head dim
V     vocabulary size
P     page size (tokens per KV page)
NP    pages in the device KV cache (page 0 is the null page)
M     max pages per sequence in a step's page table (bucketed)
====  ===========================================================

A comment like ``kv_lens,  # i32[B]`` reads "int32 array of shape (B,)"; ``f[...]`` is the
activation dtype (float32 or bfloat16).
"""

import jax

Array = jax.Array
