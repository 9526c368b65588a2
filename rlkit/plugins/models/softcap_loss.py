"""Soft-capped cross-entropy over a large vocabulary, computed in row chunks: the same numbers, less memory traffic.

The GPT's loss is F.cross_entropy(c * tanh(logits.float() / c), targets, ignore_index=-1). Written as plain
tensor ops, each of the ~11 passes over the (tokens, vocab) logits (cast, divide, tanh, multiply,
log-softmax; and backward: zeros + scatter, log-softmax backward, multiply, tanh backward, divide, cast)
allocates and streams a fresh tensor of tokens x vocab floats (512 MB at 4096 x 32768), so on a CPU the
loss cost about 4x the lm_head matmul. Here every pass runs on a block of `rows` rows that stays in cache
and in reused memory; only tanh's output and the log-probabilities (which autograd keeps anyway) are
stored whole. With bf16 logits (autocast) the cast, divide and tanh passes are one lookup in a 65,536-entry
table of their results (_bf16_tanh_table): tanh was the costliest pass.

Bitwise the same as the plain ops: each chunk calls the very ATen kernels autograd would call (div, tanh,
mul, _log_softmax, and in backward _log_softmax_backward_data, mul, tanh_backward, div, the cast), all of
which work row by row; and the reduction over rows stays one F.nll_loss call on the picked
log-probabilities (N, 1), which sums the same values in the same order as cross_entropy's does.
tests/test_model.py checks logits, loss and gradients against the plain formula bit for bit.
"""
import torch
import torch.nn.functional as F

CHUNK_BYTES = 1 << 21  # float32 rows per block: 2 MB, so a block and its result stay in cache. Each block costs ~12
# kernel calls; against 16 MB: the loss alone ~1.15x, a d4 fp32 step at vocab 32768 ~1.01x (benchmarks/eager_parts.py)


class _PickedLogProbs(torch.autograd.Function):
    """logits (N, V) -> log_softmax(c * tanh(logits.float() / c))[i, targets[i]] (N,), chunked."""

    @staticmethod
    def forward(ctx, logits, targets, softcap):
        N, V = logits.shape
        rows = max(1, CHUNK_BYTES // (4 * V))
        table = _bf16_tanh_table(softcap, logits.device) if logits.dtype == torch.bfloat16 else None
        t = torch.empty(N, V, dtype=torch.float32, device=logits.device)  # tanh(z / c), for backward
        logp = torch.empty_like(t)
        for i in range(0, N, rows):
            if table is None:
                torch.tanh(logits[i:i + rows].float() / softcap, out=t[i:i + rows])
            else:  # bf16 logits: one lookup in place of the cast, divide and tanh passes (~1/3 of their time)
                _lookup(table, logits[i:i + rows], out=t[i:i + rows])
            torch._log_softmax(softcap * t[i:i + rows], 1, False, out=logp[i:i + rows])
        index = targets.clamp(min=0)[:, None]
        ctx.save_for_backward(t, logp, index)
        ctx.softcap, ctx.dtype, ctx.rows = softcap, logits.dtype, rows
        return logp.gather(1, index)[:, 0]

    @staticmethod
    def backward(ctx, grad_picked):
        t, logp, index = ctx.saved_tensors
        c, rows = ctx.softcap, ctx.rows
        grad = torch.empty(t.shape, dtype=ctx.dtype, device=t.device)
        for i in range(0, t.size(0), rows):
            g = torch.zeros_like(t[i:i + rows]).scatter_(1, index[i:i + rows], grad_picked[i:i + rows, None])
            g = torch._log_softmax_backward_data(g, logp[i:i + rows], 1, torch.float32)
            g = torch.ops.aten.tanh_backward(g.mul_(c), t[i:i + rows])
            # divide in float32, rounded to the logits' dtype on store: the cast .float()'s backward does, in one pass
            torch.div(g, c, out=grad[i:i + rows])
        return grad, None, None


_TANH_TABLES = {}  # (softcap, device) -> tanh(b.float() / softcap) for all 65,536 bf16 bit patterns b


def _bf16_tanh_table(softcap, device):
    """float32 tanh(b.float() / c) for every bf16 value b, indexed by b's 16 bits (256 KB).

    A bf16 logit has only 65,536 possible values, so its tanh can be read instead of computed: ATen's
    float tanh costs ~2.5 ns an element on one CPU thread, a lookup ~0.7 ns. The table is computed once with
    the very kernels the plain formula calls (cast, divide, tanh), so a lookup returns what they would for
    that element: they work element by element, and ATen's vectorised tanh takes a tensor's tail through
    the same vector code (tests/test_model.py checks all 65,536 values, and whole losses, bit for bit)."""
    key = (softcap, device)
    if key not in _TANH_TABLES:
        bits = torch.arange(65536, dtype=torch.int32, device=device).to(torch.uint16).view(torch.bfloat16)
        _TANH_TABLES[key] = torch.tanh(bits.float() / softcap)
    return _TANH_TABLES[key]


def _lookup(table, x, out):
    """out (rows, V) float32 contiguous <- table[bits of x] for bf16 x (rows, V), any strides."""
    index = x.view(torch.uint16).to(torch.int32).reshape(-1)  # a strided x converts to a contiguous copy
    torch.index_select(table, 0, index, out=out.view(-1))


def softcap_cross_entropy(logits, targets, softcap, reduction="mean"):
    """F.cross_entropy(softcap * tanh(logits.float() / softcap), targets, ignore_index=-1, reduction=reduction)
    for logits (N, V) and targets (N,), bitwise, with chunked passes over the logits."""
    picked = _PickedLogProbs.apply(logits, targets, softcap)  # (N,)
    return F.nll_loss(picked[:, None], targets.clamp(max=0), ignore_index=-1, reduction=reduction)


class _FusedSoftcapNLL(torch.autograd.Function):
    """logits (N, V) -> per-row nll (N,) of softcap * tanh(logits.float() / softcap), for torch.compile.

    The gradient is written out by hand: d nll_i / d logits_i = (softmax(z_i) - onehot(y_i)) * (1 - t_i^2),
    t = tanh(logits / c), z = c t (cross_entropy's chain rule: log_softmax backward, times c, tanh backward,
    divided by c, collapsed into one product). Inductor then needs two fused passes over the logits, one row
    reduction (logsumexp) and one pointwise pass for the gradient, where for the plain formula it emits a
    log_softmax and a log_softmax-backward kernel that cost ~1.4x these.

    tanh is taken as t = 2 s - 1 with s = sigmoid(2 logits / c) (the identity tanh(y) = 2 sigmoid(2y) - 1), and
    1 - t^2 as 4 s (1 - s): on a CPU a vectorised tanh costs ~7x a sigmoid (2.9 against 0.4 ns an element, one
    thread), and the two passes take one each, so at 4096 x 32768 logits this halves the loss's kernels
    (benchmarks/vs_nanochat.py, docs/performance.md). The rounding differs from tanh's by ~1e-7 absolute
    in t (the logits are bf16 or fp32 to begin with). Same math; the gradient is rounded differently from
    the plain formula's (one product instead of four kernels), so compiled steps are not bitwise the plain
    formula's (eager steps use softcap_cross_entropy above, which is)."""

    @staticmethod
    def forward(ctx, logits, targets, softcap):
        s = torch.sigmoid(logits.float() * (2 / softcap))
        z = softcap * (2 * s - 1)  # softcap * tanh(logits / softcap)
        lse = torch.logsumexp(z, 1, keepdim=True)  # (N, 1)
        index = targets.clamp(min=0)[:, None]
        onehot = torch.arange(z.size(1), device=z.device)[None] == index
        ctx.save_for_backward((torch.exp(z - lse) - onehot.float()) * (4 * s * (1 - s)))
        ctx.dtype = logits.dtype
        return (lse - z.gather(1, index))[:, 0]

    @staticmethod
    def backward(ctx, grad_nll):
        (grad,) = ctx.saved_tensors
        return (grad * grad_nll[:, None]).to(ctx.dtype), None, None


def fused_softcap_cross_entropy(logits, targets, softcap, reduction="mean"):
    """softcap_cross_entropy's loss for the compiled forward (see _FusedSoftcapNLL): ignore_index=-1 rows count 0,
    "mean" divides by the number of the other rows (as cross_entropy does: nan if there are none)."""
    valid = targets != -1
    nll = torch.where(valid, _FusedSoftcapNLL.apply(logits, targets, softcap), 0.0)
    return nll.sum() / valid.sum() if reduction == "mean" else nll
