"""The decode-time KV cache for G samples of each of P prompts, each prompt's keys and values kept once
(GPTDecoder.prefill hands rollouts this cache; gpt_decode.py)."""
import torch
import torch.nn.functional as F


class SharedPrefixCache:
    """Decode-time KV cache for G samples of each of P prompts: each prompt's keys/values are stored once.

    prefix k/v: (n_layer, P, H, Tp, D) from the prefill, prompt p's padding masked; suffix k/v: (n_layer, N, H,
    slots, D), one row per sample, all rows in step (t tokens each; slots: max_new, or on CPU t rounded up to
    GROW). A row's query is scored against its prompt's prefix (one (G, D) x (D, Tp) matmul per prompt and
    head, so the prefix is read once per prompt, not G times) and against its own suffix; one softmax runs
    over both. GPT.forward drives it through begin / attend / end, like KVCache; keep(rows) compacts the rows.
    """

    GROW = 16  # CPU: suffix slots added at a time

    def __init__(self, prefill, lens, G, max_new, dtype):
        L, P, Tp, H, D = prefill.k.shape
        self.P, self.G, self.Tp = P, G, Tp
        self.pk = prefill.k.transpose(2, 3).contiguous()  # (L, P, H, Tp, D)
        self.pv = prefill.v.transpose(2, 3).contiguous()
        # CPU matmuls copy a strided slice of the suffix first, so on CPU the suffix holds only the slots reached
        # so far, rounded up to GROW, and every step scores all of them (contiguous): it grows by a copy every
        # GROW steps, and a step reads ~t + GROW / 2 slots, not max_new (elsewhere: max_new slots, t + 1 read)
        slots = min(max_new, self.GROW) if lens.device.type == "cpu" else max_new
        self.k = torch.zeros(L, P * G, H, slots, D, dtype=dtype, device=lens.device)
        self.v = torch.zeros_like(self.k)
        self.rows = torch.arange(P * G, device=lens.device)  # original row (p * G + g) of each active row
        self.pos = lens.repeat_interleave(G)  # (n,): rotary position of each row's next token
        pad = torch.arange(Tp, device=lens.device) >= lens[:, None]  # (P, Tp): True on prompt padding
        self.pad = pad.repeat_interleave(G, dim=0)[:, None]  # (n, 1, Tp)
        self.t = 0
        self.scale = D**-0.5

    def begin(self, T):
        assert T == 1, "SharedPrefixCache decodes one token per row per forward"
        if self.t == self.k.size(3):  # CPU: the suffix is full; grow it by GROW slots (rows still active only)
            (L, _, H, S, D), n = self.k.shape, self.rows.numel()
            for name in ("k", "v"):
                old = getattr(self, name)
                new = old.new_empty(L, n, H, S + self.GROW, D)
                new[..., :S, :] = old[:, :n]
                new[..., S:, :] = 0  # unwritten slots get probability 0, and 0 * (garbage NaN) would be NaN
                setattr(self, name, new)
        return self.pos[:, None]  # (n, 1)

    def attend(self, layer, q, k, v):
        """q, k, v (n, 1, H, D) -> (n, H, 1, D), like F.scaled_dot_product_attention's output."""
        n, _, H, D = q.shape
        P, G, Tp, t = self.P, self.G, self.Tp, self.t
        self.k[layer, :n, :, t] = k[:, 0]
        self.v[layer, :n, :, t] = v[:, 0]
        q = q[:, 0]  # (n, H, D)
        grid = q.new_zeros(P * G, H, D)
        grid[self.rows] = q  # queries by prompt: (P, G) slots, finished rows left zero
        s_pre = grid.view(P, G, H, D).transpose(1, 2) @ self.pk[layer].transpose(-1, -2)  # (P, H, G, Tp)
        s_pre = s_pre.transpose(1, 2).reshape(P * G, H, Tp)[self.rows]  # (n, H, Tp)
        S = self.k.size(3) if q.device.type == "cpu" else t + 1  # CPU: every slot (see __init__), masked past t
        s_suf = q[:, :, None] @ self.k[layer, :n, :, :S].transpose(-1, -2)  # (n, H, 1, S)
        s_suf = s_suf[:, :, 0].float()
        if S > t + 1:
            s_suf[..., t + 1:] = float("-inf")
        s = torch.cat([s_pre.float().masked_fill_(self.pad, float("-inf")), s_suf], dim=-1)
        p = torch.softmax(s * self.scale, dim=-1).to(q.dtype)  # (n, H, Tp + S)
        p_grid = p.new_zeros(P * G, H, Tp)
        p_grid[self.rows] = p[..., :Tp]
        y_pre = p_grid.view(P, G, H, Tp).transpose(1, 2) @ self.pv[layer]  # (P, H, G, D)
        y_pre = y_pre.transpose(1, 2).reshape(P * G, H, D)[self.rows]  # (n, H, D)
        y_suf = p[:, :, None, Tp:] @ self.v[layer, :n, :, :S]  # (n, H, 1, D)
        return y_pre[:, :, None] + y_suf

    def end(self, T):
        self.pos += T
        self.t += T

    def keep(self, rows):
        """Keep only active rows `rows` (LongTensor of indices into the active rows), in that order."""
        n, t = rows.numel(), self.t
        self.k[:, :n, :, :t] = self.k[:, rows, :, :t]
        self.v[:, :n, :, :t] = self.v[:, rows, :, :t]
        self.rows, self.pos, self.pad = self.rows[rows], self.pos[rows], self.pad[rows]
