"""Qwen2-Audio inference in MindSpore graph mode over a closed set of static shapes.

Only this package imports MindSpore, and only inside `engine`, `graphs`, `token_choice`, `generate`,
`encoder`, `decoder`, `layers`, `weights` and `runtime`; planning modules (`model_plan`,
`graph_shapes`, `prompts`, `spec`, `checkpoint`, `decoding`) and `loops` stay importable without it.
"""
