"""Random inputs for the tests: odd sizes, non-contiguous layouts, random paged block tables."""

import torch


def _strided(shape, dtype, device, gen, noncontig):
    if not noncontig:
        return torch.randn(*shape, generator=gen, dtype=torch.float32).to(device=device, dtype=dtype)
    # Allocate with the last two axes swapped and a padded head dim, then view back: strides differ.
    big = torch.randn(*shape[:-2], shape[-1] + 3, shape[-2], generator=gen).to(device=device, dtype=dtype)
    return big.transpose(-1, -2)[..., : shape[-1]]


def dense(b=2, sq=7, sk=11, hq=4, hkv=2, d=40, dv=None, dtype=torch.float32, device="cpu", seed=0,
          noncontig=False):
    g = torch.Generator().manual_seed(seed)
    dv = dv or d
    return (_strided((b, sq, hq, d), dtype, device, g, noncontig),
            _strided((b, sk, hkv, d), dtype, device, g, noncontig),
            _strided((b, sk, hkv, dv), dtype, device, g, noncontig))


def cu(lens, device="cpu"):
    out = [0]
    for n in lens:
        out.append(out[-1] + n)
    return torch.tensor(out, dtype=torch.int32, device=device)


def varlen(lens_q, lens_k, hq=4, hkv=2, d=40, dv=None, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    dv = dv or d
    q = torch.randn(sum(lens_q), hq, d, generator=g).to(device=device, dtype=dtype)
    k = torch.randn(sum(lens_k), hkv, d, generator=g).to(device=device, dtype=dtype)
    v = torch.randn(sum(lens_k), hkv, dv, generator=g).to(device=device, dtype=dtype)
    return q, k, v, cu(lens_q, device), cu(lens_k, device)


def paged(seqused, nq=None, block_size=16, hq=4, hkv=2, d=40, dv=None, dtype=torch.float32, device="cpu",
          seed=0, spare_blocks=3):
    """KV cache with a random, non-contiguous block table; nq = query tokens per sequence (None: decode)."""
    g = torch.Generator().manual_seed(seed)
    dv = dv or d
    blocks_per_seq = [(n + block_size - 1) // block_size for n in seqused]
    max_blocks = max(max(blocks_per_seq), 1)
    num_blocks = sum(blocks_per_seq) + spare_blocks
    k_cache = torch.randn(num_blocks, block_size, hkv, d, generator=g).to(device=device, dtype=dtype)
    v_cache = torch.randn(num_blocks, block_size, hkv, dv, generator=g).to(device=device, dtype=dtype)
    perm = torch.randperm(num_blocks, generator=g)
    table = torch.full((len(seqused), max_blocks + 1), -1, dtype=torch.int32)  # unused slots: garbage ids
    used = 0
    for b, nb in enumerate(blocks_per_seq):
        table[b, :nb] = perm[used:used + nb].to(torch.int32)
        table[b, nb:] = perm[-1].to(torch.int32)
        used += nb
    counts = [1] * len(seqused) if nq is None else nq
    q = torch.randn(sum(counts), hq, d, generator=g).to(device=device, dtype=dtype)
    cu_q = None if nq is None else cu(nq, device)
    return (q, k_cache, v_cache, table.to(device), torch.tensor(seqused, dtype=torch.int32, device=device),
            cu_q, max(counts) if counts else 0)


def rel_err(out, ref):
    out, ref = out.double().cpu(), ref.double().cpu()
    return float((out - ref).norm() / ref.norm().clamp_min(1e-12))


KV_LAYOUTS = ("nhd", "hnd", "vllm_kv")


def relayout(k_cache, v_cache, layout):
    """The same cache values as views in an engine's memory layout (nothing the op may copy).

    nhd: (num_blocks, block_size, Hkv, D) contiguous, flash-attn / vLLM's FlashAttention layout.
    hnd: FlashInfer's (num_blocks, Hkv, block_size, D), passed as its NHD-shaped transpose.
    vllm_kv: one (num_blocks, Hkv, block_size, D + Dv) tensor per layer holding K and V side by
             side, split into two strided views (token stride != Hkv * D).
    """
    if layout == "nhd":
        return k_cache, v_cache
    if layout == "hnd":
        return (k_cache.transpose(1, 2).contiguous().transpose(1, 2),
                v_cache.transpose(1, 2).contiguous().transpose(1, 2))
    if layout == "vllm_kv":
        d = k_cache.shape[-1]
        both = torch.cat([k_cache, v_cache], dim=-1).transpose(1, 2).contiguous()  # (nb, H, bs, D+Dv)
        return both[..., :d].transpose(1, 2), both[..., d:].transpose(1, 2)
    raise ValueError(f"layout: expected one of {KV_LAYOUTS}, got {layout!r}")


def poison_past_seqused(kc, vc, table, used):
    """NaN in every cache row a sequence does not use: what a cache from torch.empty may hold."""
    bs = kc.shape[1]
    table, used = table.cpu().long(), used.cpu().long()
    j = torch.arange(table.shape[1] * bs)
    valid = j.view(1, -1) < used.view(-1, 1)  # (B, slots * bs): the rows each sequence reads
    live = torch.zeros(kc.shape[:2], dtype=torch.bool)
    live[table[:, j // bs][valid], (j % bs).expand_as(valid)[valid]] = True
    live = live.to(kc.device)
    kc[~live] = float("nan")
    vc[~live] = float("nan")
