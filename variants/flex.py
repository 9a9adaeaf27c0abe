"""Flex attention with a block mask: the document mask at scale (python -m variants --doc-mask --attention flex).

Paper idea: "Short Data, Long Context" (arXiv 2604.06070) compares plain causal attention across the packed documents
with a document mask. model.document_mask is dense (B x T^2 bools, and SDPA with an explicit mask cannot take the
flash kernel); here the same mask is a flex-attention BlockMask of 128 x 128 tiles, the fully masked ones skipped
(PyTorch's FlexAttention, 2024), tested equal to model.reference_attention under the dense mask. CUDA only for
training: torch has no flex-attention backward on CPU. Importing this file registers the kernel as model.KERNELS["flex"].
"""
import warnings

import torch

import model

def document_block_mask(doc_ids: torch.Tensor, compile_mask: bool | None = None):
    """The same mask as a flex-attention BlockMask: 128 x 128 tiles, the fully masked ones skipped (PyTorch's
    FlexAttention, 2024). Memory O(B * (T/128)^2) instead of O(B * T^2).

    compile_mask (default: on CUDA) builds it with torch.compile, tile by tile: built eagerly, it first
    materialises the B x T x T bools it summarises (394 MiB at B = 2, T = 4096, more than the dense mask).
    The mask of the last doc_ids is kept, so a step's student and teacher, which see the same batch, share one.
    """
    from torch.nn.attention.flex_attention import create_block_mask
    last = _LAST_BLOCK_MASK.get("doc_ids")
    if last is not None and last[0] is doc_ids and last[1] == doc_ids._version:
        return _LAST_BLOCK_MASK["mask"]

    def same_doc_causal(b, h, q, k):
        return (q >= k) & (doc_ids[b, q] == doc_ids[b, k])
    B, T = doc_ids.shape
    compile_mask = doc_ids.is_cuda if compile_mask is None else compile_mask
    mask = create_block_mask(same_doc_causal, B, None, T, T, device=doc_ids.device, _compile=compile_mask)
    _LAST_BLOCK_MASK.update(doc_ids=(doc_ids, doc_ids._version), mask=mask)  # holds doc_ids: its id stays unique
    return mask


_LAST_BLOCK_MASK = {}  # {"doc_ids": (the tensor, its version counter), "mask": its BlockMask}


def flex_attention(q, k, v, block_mask):
    """A speed path for --doc-mask: torch's flex_attention with a BlockMask (document_block_mask), the same as
    reference_attention under document_mask; compiled on CUDA (fused kernel), eager elsewhere (unfused, and no
    backward on CPU)."""
    from torch.nn.attention.flex_attention import flex_attention as flex
    global _compiled_flex
    enable_gqa = k.shape[1] != q.shape[1]
    if q.device.type == "cuda":
        _compiled_flex = _compiled_flex or torch.compile(flex)
        return _compiled_flex(q, k, v, block_mask=block_mask, enable_gqa=enable_gqa)
    with warnings.catch_warnings():  # torch warns that eager flex is unfused: known, it only checks the CUDA path
        warnings.simplefilter("ignore")
        return flex(q, k, v, block_mask=block_mask, enable_gqa=enable_gqa)


_compiled_flex = None




class Flex:
    """model.KERNELS' "flex": the block mask of the batch's documents, then flex_attention."""

    def mask(self, doc_ids):
        return document_block_mask(doc_ids)

    def __call__(self, q, k, v, block_mask):
        return flex_attention(q, k, v, block_mask)


model.KERNELS["flex"] = Flex()
