"""The GPT: loss masking, FLOPs arithmetic, parameter roles, that it learns, autocast, the KV cache, compile."""
import pytest
import torch

from rlkit.core.errors import RlkitError
from rlkit.plugins.models.gpt_model import GPT, GPTConfig
from rlkit.plugins.models.gpt_decode import KVCache


def tiny(depth=2, vocab_size=100, seq_len=32, seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(depth=depth, vocab_size=vocab_size, seq_len=seq_len))


def test_config_one_dial():
    c = GPTConfig(depth=3, vocab_size=100, seq_len=32, head_dim=128)
    assert (c.n_layer, c.width, c.n_head) == (3, 256, 2)  # 3 * 64 = 192, rounded up to a multiple of 128
    c = GPTConfig(depth=4, vocab_size=100, seq_len=32)
    assert (c.n_layer, c.width, c.n_head, c.padded_vocab) == (4, 256, 4, 128)
    with pytest.raises(RlkitError, match="depth"):
        GPTConfig(depth=0, vocab_size=100, seq_len=32)
    with pytest.raises(RlkitError, match="head_dim"):
        GPTConfig(depth=2, vocab_size=100, seq_len=32, head_dim=63)


@pytest.mark.parametrize("depth, head_dim, vocab_size, lambdas", [(1, 64, 100, True), (3, 128, 512, False), (4, 64, 65, True)])
def test_param_count_from_the_config_equals_the_built_models(depth, head_dim, vocab_size, lambdas):
    """`rlkit check` counts parameters without torch (gpt_config.py); the count must be the network's."""
    from rlkit.plugins.models.gpt import param_count

    config = GPTConfig(depth=depth, vocab_size=vocab_size, seq_len=32, head_dim=head_dim, lambdas=lambdas)
    with torch.device("meta"):
        built = sum(p.numel() for p in GPT(config).parameters())
    assert config.param_count() == built
    assert param_count(vocab_size, 32, depth=depth, head_dim=head_dim, lambdas=lambdas) == built


def test_ignored_targets_give_zero_loss_and_mean_skips_them():
    model = tiny()
    idx = torch.randint(0, 100, (3, 16))
    targets = torch.randint(0, 100, (3, 16))
    targets[0, :5] = -1
    targets[2, 10:] = -1
    per_token = model(idx, targets, loss_reduction="none")
    assert per_token.shape == (3, 16)
    assert torch.all(per_token[targets == -1] == 0)
    assert torch.all(per_token[targets != -1] > 0)
    mean = model(idx, targets)
    assert torch.allclose(mean, per_token.sum() / (targets != -1).sum())
    logits = model(idx)
    assert logits.shape == (3, 16, 100) and logits.dtype == torch.float32
    assert logits.abs().max() <= model.config.softcap


def test_flops_per_token_by_hand():
    model = tiny(depth=2, vocab_size=100, seq_len=32)
    # width 128; per layer q, k, v, proj: 4 * 128 * 128, MLP: 2 * 128 * 512 -> 12 * 128^2 = 196,608
    # two layers: 393,216; lm_head over the vocabulary padded to 128: 128 * 128 = 16,384; matmul weights 409,600
    # 6 * 409,600 = 2,457,600; attention 12 * n_layer * width * seq_len = 12 * 2 * 128 * 32 = 98,304
    assert model.flops_per_token() == 2_457_600 + 98_304 == 2_555_904


def test_every_parameter_in_exactly_one_role():
    model = tiny()
    roles = model.param_roles()
    assert set(roles) == {"matrix", "embedding", "unembedding", "scalar"}
    ids = [id(p) for group in roles.values() for p in group]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters()}
    assert all(p.dim() == 2 for p in roles["matrix"]) and all(p.dim() == 1 for p in roles["scalar"])
    assert roles["embedding"] == [model.wte.weight] and roles["unembedding"] == [model.lm_head.weight]


def test_init_is_deterministic_given_the_seed():
    a, b = tiny(seed=3).state_dict(), tiny(seed=3).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = tiny(seed=4).state_dict()
    assert not torch.equal(a["wte.weight"], c["wte.weight"])


def test_adamw_on_a_repeated_sequence_makes_loss_fall():
    model = tiny()
    torch.manual_seed(1)
    seq = torch.randint(0, 100, (4, 33))
    idx, targets = seq[:, :-1], seq[:, 1:]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    losses = []
    for _ in range(30):
        loss = model(idx, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 4.0  # about ln(100) = 4.6 at init: the first logits are near uniform
    assert losses[-1] < 0.3 * losses[0]


def test_forward_under_cpu_bf16_autocast():
    model = tiny()
    idx, targets = torch.randint(0, 100, (2, 16)), torch.randint(0, 100, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(idx)
        loss = model(idx, targets)
    assert logits.dtype == torch.float32
    loss.backward()
    assert torch.isfinite(loss) and abs(loss.item() - model(idx, targets).item()) < 0.05
    assert all(p.grad is not None and p.dtype == torch.float32 for p in model.parameters())


def test_inference_copy_matches_autocast_exactly():
    model = tiny()
    with torch.no_grad():
        for p in model.param_roles()["matrix"]:
            p.normal_(0, 0.3)
    idx = torch.randint(0, 100, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        copy = model.inference_copy(torch.bfloat16)
        assert copy.lm_head.weight.dtype == torch.bfloat16 and model.lm_head.weight.dtype == torch.float32
        assert torch.equal(copy(idx), model(idx))


def test_kv_cache_with_per_row_positions_matches_full_forward():
    """Right-padded prompts of different lengths, prefilled together, then decoded one token per row."""
    model = tiny()
    with torch.no_grad():
        for p in model.param_roles()["matrix"]:
            p.normal_(0, 0.3)
    torch.manual_seed(2)
    lens = torch.tensor([3, 9, 5])  # prompt lengths; then 2 tokens of each row at once, then 1 at a time
    seqs = [torch.randint(0, 100, (n + 5,)) for n in lens.tolist()]
    prompts = torch.zeros(3, 9, dtype=torch.long)
    for b, s in enumerate(seqs):
        prompts[b, :lens[b]] = s[:lens[b]]
    cache = KVCache(model.config, batch=3, max_len=9 + 5)
    with torch.no_grad():
        model(prompts, kv_cache=cache)
        cache.pos = lens.clone()  # each row continues after its own prompt
        two = torch.stack([s[lens[b]:lens[b] + 2] for b, s in enumerate(seqs)])  # (3, 2)
        logits = model(two, kv_cache=cache)  # (3, 2, V)
        for b, s in enumerate(seqs):
            assert torch.allclose(logits[b], model(s[None, :lens[b] + 2])[0, -2:], atol=1e-4)
        for step in range(2, 5):
            nxt = torch.stack([s[lens[b] + step] for b, s in enumerate(seqs)])
            logits = model(nxt[:, None], kv_cache=cache)[:, 0]  # (3, V)
            for b, s in enumerate(seqs):
                full = s[:lens[b] + step + 1]
                assert torch.allclose(logits[b], model(full[None])[0, -1], atol=1e-4)


@pytest.mark.slow
def test_training_forward_compiles_without_graph_breaks():
    model = tiny()
    compiled = torch.compile(model, fullgraph=True)
    idx, targets = torch.randint(0, 100, (2, 32)), torch.randint(0, 100, (2, 32))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = compiled(idx, targets)
        loss.backward()
        eager = model(idx, targets)
    assert abs(loss.item() - eager.item()) < 0.05


@pytest.mark.slow
@pytest.mark.parametrize("amp", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_compiled_loss_matches_the_plain_formula(monkeypatch, amp, reduction):
    """Compiled, the loss's gradient is written by hand (softcap_loss.fused_softcap_cross_entropy): loss and
    every parameter's gradient agree, up to float rounding, with the same compiled model whose loss is the
    plain formula (so both share the trunk's compiled kernels and bf16 roundings), with ignored targets, a
    padded vocabulary (strided logits), logits deep in the softcap's tanh and a non-uniform upstream gradient."""
    import torch.nn.functional as F

    from rlkit.plugins.models import gpt_model as gpt_module

    model = tiny(vocab_size=100)
    with torch.no_grad():  # logits of ~20 (deep in the softcap's tanh) and non-zero output projections
        model.lm_head.weight.normal_(0, 2.0)
        for block in model.blocks:
            block.attn.c_proj.weight.normal_(0, 0.05)
            block.mlp.c_proj.weight.normal_(0, 0.05)
    idx, targets = torch.randint(0, 100, (3, 16)), torch.randint(0, 100, (3, 16))
    targets[1, 3:9] = -1
    weights = torch.rand(3, 16)

    def plain_loss(logits, targets, c, reduction):
        return F.cross_entropy(c * torch.tanh(logits.float() / c), targets, ignore_index=-1, reduction=reduction)

    def run(plain):
        if plain:
            monkeypatch.setattr(gpt_module, "fused_softcap_cross_entropy", plain_loss)
        torch._dynamo.reset()
        compiled = torch.compile(model, fullgraph=True, dynamic=False)
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", torch.bfloat16, enabled=amp):
            loss = compiled(idx, targets, loss_reduction=reduction)
        (loss * weights).sum().backward() if reduction == "none" else loss.backward()
        monkeypatch.undo()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    (loss, grads), (plain, plain_grads) = run(False), run(True)
    tol = dict(rtol=1e-3, atol=1e-5)
    assert torch.allclose(plain, loss, **tol)
    assert (loss.view(-1)[targets.view(-1) == -1] == 0).all() if reduction == "none" else loss > 0
    for a, b in zip(plain_grads, grads):
        assert torch.allclose(a, b, **tol), (a - b).abs().max()
    assert sum(g.abs().sum() for g in grads) > 0


@pytest.mark.parametrize("amp", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_chunked_loss_equals_the_plain_formula_bit_for_bit(monkeypatch, amp, reduction):
    """The model's loss (softcap_loss.py, several row chunks here) against the formula written as plain ops on
    its own logits: loss and every parameter's gradient identical, in fp32 and under bf16 autocast."""
    import torch.nn.functional as F

    from rlkit.plugins.models import softcap_loss

    monkeypatch.setattr(softcap_loss, "CHUNK_BYTES", 4 * 100 * 7)  # 7 rows a chunk: 48 rows -> 7 chunks
    lookups = []  # bf16 logits (under autocast) take tanh from the table: count that they did
    monkeypatch.setattr(softcap_loss, "_lookup", lambda *a, lookup=softcap_loss._lookup, **k: lookups.append(1)
                        or lookup(*a, **k))
    model = tiny(vocab_size=100)  # padded to 128: the logits are a strided slice
    idx, targets = torch.randint(0, 100, (3, 16)), torch.randint(0, 100, (3, 16))
    targets[1, 3:9] = -1
    weights = torch.rand(3, 16)  # a non-uniform upstream gradient for reduction="none"

    def run(plain):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", torch.bfloat16, enabled=amp):
            if plain:
                logits = model.lm_head(model.trunk(idx))[..., :100]
                c = model.config.softcap
                loss = F.cross_entropy((c * torch.tanh(logits.float() / c)).flatten(0, 1), targets.flatten(),
                                       ignore_index=-1, reduction=reduction)
                loss = loss.view(3, 16) if reduction == "none" else loss
            else:
                loss = model(idx, targets, loss_reduction=reduction)
        (loss * weights).sum().backward() if reduction == "none" else loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    (plain_loss, plain_grads), (loss, grads) = run(True), run(False)
    assert torch.equal(plain_loss, loss)
    assert all(torch.equal(a, b) for a, b in zip(plain_grads, grads))
    assert sum(g.abs().sum() for g in grads) > 0
    assert len(lookups) == (7 if amp else 0)


def test_bf16_tanh_table_is_the_tanh_kernel_for_every_bf16_value():
    """The eager loss reads tanh(b / c) of a bf16 logit b from a table: for all 65,536 bit patterns (nan, inf,
    subnormals included), laid out whole, and again as a strided slice of odd width, it returns exactly what
    the plain ops (cast, divide, tanh) return for the same tensor."""
    from rlkit.plugins.models.softcap_loss import _bf16_tanh_table, _lookup

    every = torch.arange(65536, dtype=torch.int32).to(torch.uint16).view(torch.bfloat16)
    for x in (every.view(256, 256), every[:511 * 128].view(511, 128)[:, 3:100]):  # 511 x 97: a ragged tail
        out = torch.empty(x.shape)
        _lookup(_bf16_tanh_table(15.0, x.device), x, out)
        plain = torch.tanh(x.float() / 15.0)
        assert torch.equal(out.view(torch.int32), plain.view(torch.int32))  # bits, so that nan == nan
    assert out.isnan().any() and (out == 1).any() and (out == -1).any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_relu_squared_gives_the_plain_formulas_values_and_gradient(dtype):
    """relu_squared (the MLP's activation, with a two-pass backward) against F.relu(x).square() under autograd:
    the same outputs and input gradients (equal values; a masked 0 may come back as -0.0), half the inputs
    negative, x exactly 0 included."""
    import torch.nn.functional as F

    from rlkit.plugins.models.relu_squared import relu_squared

    x = torch.randn(64, 256).to(dtype)
    x[0, :8] = 0
    grad = torch.randn(64, 256).to(dtype)
    outs = []
    for f in (lambda t: F.relu(t).square(), relu_squared):
        leaf = x.clone().requires_grad_()
        y = f(leaf)
        y.backward(grad)
        outs.append((y.detach(), leaf.grad))
    (y_plain, g_plain), (y, g) = outs
    assert torch.equal(y_plain, y) and torch.equal(g_plain, g)
    assert (g[x <= 0] == 0).all() and (g[x > 0] != 0).all()


def test_training_steps_with_relu_squared_match_the_plain_activation_bit_for_bit(monkeypatch):
    """Five Muon steps of a GPT with the MLP's activation as relu_squared and as F.relu(x).square(): the same
    loss at every step, to the last bit (what keeps a run's figures unchanged)."""
    import torch.nn.functional as F

    from rlkit.plugins.models import gpt_model as gpt
    from rlkit.plugins.optimizers.muon import muon

    idx = torch.randint(0, 100, (4, 33))

    def losses():
        model = tiny()
        opt = muon(model)
        out = []
        for _ in range(5):
            loss = model(idx[:, :-1], idx[:, 1:])
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            out.append(loss.item())
        return out

    ours = losses()
    monkeypatch.setattr(gpt, "relu_squared", lambda t: F.relu(t).square())
    assert losses() == ours and ours[-1] < ours[0]
