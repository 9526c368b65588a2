"""Optimizers: parameter roles, the lr schedule, and the muon and adamw plugins (loaded by name)."""
import copy
import io

import pluggy
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rlkit.core import hookspecs
from rlkit.core.errors import RlkitError
from rlkit.lib.training.optim import lr_multiplier, param_roles, set_lr
from rlkit.plugins.optimizers import adamw as adamw_plugin
from rlkit.plugins.optimizers import muon as muon_plugin
from rlkit.plugins.optimizers import muon_optimizer
from rlkit.plugins.optimizers.muon_optimizer import MuonAdamW, orthogonalize


def load_optimizers():
    """The table a user's run sees: both modules registered on a pluggy manager with rlkit's hookspecs."""
    pm = pluggy.PluginManager("rlkit")
    pm.add_hookspecs(hookspecs)
    pm.register(muon_plugin)
    pm.register(adamw_plugin)
    return {name: f for table in pm.hook.rlkit_optimizers() for name, f in table.items()}


OPTIMIZERS = load_optimizers()


class TinyNet(nn.Module):
    """Token -> embedding -> 2-layer MLP -> gain -> lm_head: every parameter role, no GPT needed."""

    def __init__(self, vocab=32, width=64, hidden=128):
        super().__init__()
        self.wte = nn.Embedding(vocab, width)
        self.fc = nn.Linear(width, hidden, bias=False)
        self.proj = nn.Linear(hidden, width, bias=False)
        self.gain = nn.Parameter(torch.ones(()))
        self.norm = nn.LayerNorm(width)
        self.lm_head = nn.Linear(width, vocab, bias=False)

    def param_roles(self):
        return {"matrix": [self.fc.weight, self.proj.weight], "embedding": [self.wte.weight],
                "unembedding": [self.lm_head.weight],
                "scalar": [self.gain, self.norm.weight, self.norm.bias]}

    def forward(self, x):  # (B,) -> logits (B, vocab)
        h = self.wte(x)
        h = h + self.gain * self.proj(F.relu(self.fc(h)))
        return self.lm_head(self.norm(h))


class NoRolesNet(TinyNet):
    param_roles = None  # a model that does not define param_roles()


def tiny_gpt():
    model_module = pytest.importorskip("rlkit.plugins.models.gpt_model")
    torch.manual_seed(0)
    model = model_module.GPT(model_module.GPTConfig(depth=2, vocab_size=64, seq_len=16))
    model.init_weights()
    return model


def make_model(kind):
    torch.manual_seed(0)
    return tiny_gpt() if kind == "gpt" else TinyNet()


def batch(n=256, vocab=32, seed=0):
    """A learnable mapping: y = (7 x + 3) mod vocab."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, vocab, (n,), generator=g)
    return x, (7 * x + 3) % vocab


def train(model, opt, steps):
    losses = []
    for step in range(steps):
        x, y = batch(seed=step)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_plugins_register_by_name():
    assert OPTIMIZERS == {"muon": muon_plugin.muon, "adamw": adamw_plugin.adamw}


# --- orthogonalization ------------------------------------------------------------------------

@pytest.mark.parametrize("fast", [True, False], ids=["bf16-fast", "bf16-emulated"])
@pytest.mark.parametrize("shape", [(64, 32), (32, 64), (3, 48, 16)])
def test_orthogonalize_pushes_singular_values_to_one(shape, fast, monkeypatch):
    monkeypatch.setattr(muon_optimizer, "fast_bf16", lambda device: fast)
    torch.manual_seed(0)
    G = torch.randn(*shape) * 1e-3  # scale must not matter
    O = orthogonalize(G if G.ndim == 3 else G[None])
    assert O.shape[-2:] == shape[-2:]
    s = torch.linalg.svdvals(O.float())
    assert s.min() >= 0.5 and s.max() <= 1.5, (s.min(), s.max())
    assert O.dtype == (torch.bfloat16 if fast else torch.float32)


def test_orthogonalize_runs_in_fp32_where_bf16_is_emulated(monkeypatch):
    """Where bf16 matmuls are not fast (an AVX2-only CPU), the iteration runs in fp32: it matches the
    quintic iteration written out here in float64, which bf16's 8-bit mantissa could not."""
    monkeypatch.setattr(muon_optimizer, "fast_bf16", lambda device: False)
    torch.manual_seed(0)
    G = torch.randn(2, 24, 40)
    X = G.double() / (G.double().norm(dim=(-2, -1), keepdim=True) * 1.02 + 1e-6)
    for a, b, c in muon_optimizer.POLAR_EXPRESS:
        A = X @ X.mT
        X = a * X + (b * A + c * A @ A) @ X
    torch.testing.assert_close(orthogonalize(G).double(), X, rtol=0, atol=1e-5)
    monkeypatch.setattr(muon_optimizer, "fast_bf16", lambda device: True)
    assert (orthogonalize(G).double() - X).abs().max() > 1e-3  # bf16 is far coarser: the check can tell


def test_muon_step_is_lr_times_shape_scale_times_orthogonalized_gradient():
    torch.manual_seed(0)
    W = nn.Parameter(torch.randn(64, 16))
    W.grad = torch.randn(64, 16)
    opt = MuonAdamW([dict(params=[W], kind="muon", role="matrix", lr=0.1, initial_lr=0.1,
                          momentum=0.0, weight_decay=0.0, ns_steps=5)])
    before = W.detach().clone()
    opt.step()
    expected = -0.1 * (64 / 16) ** 0.5 * orthogonalize(W.grad[None])[0].float()
    torch.testing.assert_close(W.detach() - before, expected, rtol=0, atol=1e-5)


def test_muon_adamw_groups_match_torch_adamw():
    torch.manual_seed(0)
    a, b = nn.Parameter(torch.randn(10, 4)), nn.Parameter(torch.randn(10, 4))
    b.data.copy_(a.data)
    ours = MuonAdamW([dict(params=[a], kind="adamw", role="embedding", lr=0.01, initial_lr=0.01,
                           betas=(0.8, 0.95), eps=1e-8, weight_decay=0.1)])
    ref = torch.optim.AdamW([b], lr=0.01, betas=(0.8, 0.95), eps=1e-8, weight_decay=0.1)
    for _ in range(5):
        g = torch.randn(10, 4)
        a.grad, b.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
    torch.testing.assert_close(a.detach(), b.detach())


# --- groups -----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["tiny", "gpt"])
@pytest.mark.parametrize("name", ["muon", "adamw"])
def test_every_parameter_in_exactly_one_group_with_initial_lr(name, kind):
    model = make_model(kind)
    opt = OPTIMIZERS[name](model)
    grouped = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())
    for g in opt.param_groups:
        assert g["initial_lr"] == g["lr"] > 0
        assert g["role"] in ("matrix", "embedding", "unembedding", "scalar")


def test_adamw_decays_only_matrices_and_unembedding():
    opt = OPTIMIZERS["adamw"](TinyNet(), lr=1e-3, embedding_lr=0.01, weight_decay=0.1)
    wd = {g["role"]: g["weight_decay"] for g in opt.param_groups}
    assert wd == {"matrix": 0.1, "unembedding": 0.1, "embedding": 0.0, "scalar": 0.0}
    lrs = {g["role"]: g["initial_lr"] for g in opt.param_groups}
    assert lrs == {"matrix": 1e-3, "unembedding": 1e-3, "embedding": 0.01, "scalar": 1e-3}


def test_muon_groups_by_shape_and_scales_adamw_lrs_by_width():
    opt = OPTIMIZERS["muon"](TinyNet(width=64), matrix_lr=0.01)
    muon_groups = [g for g in opt.param_groups if g["kind"] == "muon"]
    assert sorted(tuple(g["params"][0].shape) for g in muon_groups) == [(64, 128), (128, 64)]
    assert all(g["lr"] == 0.01 for g in muon_groups)
    lrs = {g["role"]: g["lr"] for g in opt.param_groups if g["kind"] == "adamw"}
    scale = (64 / 768) ** -0.5  # nanochat: embedding and unembedding lrs scale with 1/sqrt(width)
    assert lrs == pytest.approx({"embedding": 0.2 * scale, "unembedding": 0.004 * scale, "scalar": 0.05})


def test_generic_roles_fallback():
    model = NoRolesNet()
    roles = param_roles(model)
    assert roles["embedding"] == [model.wte.weight]
    assert roles["unembedding"] == [model.lm_head.weight]
    assert roles["matrix"] == [model.fc.weight, model.proj.weight]
    assert {id(p) for p in roles["scalar"]} == {id(model.gain), id(model.norm.weight), id(model.norm.bias)}


def test_bad_roles_and_bad_args_raise_rlkit_error():
    model = TinyNet()
    model.param_roles = lambda: {"matrix": [model.fc.weight]}
    with pytest.raises(RlkitError, match="expected exactly"):
        param_roles(model)
    model.param_roles = lambda: {"matrix": [model.fc.weight], "embedding": [], "unembedding": [], "scalar": []}
    with pytest.raises(RlkitError, match="every parameter"):
        param_roles(model)
    with pytest.raises(RlkitError, match="ns_steps"):
        OPTIMIZERS["muon"](TinyNet(), ns_steps=9)
    with pytest.raises(RlkitError, match="initial_lr"):
        set_lr(torch.optim.SGD(TinyNet().parameters(), lr=0.1), 0.5)


# --- schedule ---------------------------------------------------------------------------------

def test_lr_multiplier_hand_computed():
    # 100 steps: warmup 10, warmdown over the last 20 (steps 81..), to 0.1 at step 100
    kw = dict(total_steps=100, warmup_steps=10, warmdown_frac=0.2, final_frac=0.1)
    assert lr_multiplier(0, **kw) == pytest.approx(0.1)
    assert lr_multiplier(4, **kw) == pytest.approx(0.5)
    assert lr_multiplier(9, **kw) == pytest.approx(1.0)
    assert lr_multiplier(50, **kw) == 1.0
    assert lr_multiplier(80, **kw) == 1.0
    assert lr_multiplier(90, **kw) == pytest.approx(0.5 + 0.5 * 0.1)  # halfway down: 0.55
    assert lr_multiplier(99, **kw) == pytest.approx(0.05 + 0.95 * 0.1)
    assert lr_multiplier(100, **kw) == pytest.approx(0.1)
    assert lr_multiplier(500, total_steps=100) == 1.0  # constant without warmdown
    with pytest.raises(RlkitError):
        lr_multiplier(0, total_steps=10, warmdown_frac=1.5)


def test_set_lr_scales_initial_lr():
    opt = OPTIMIZERS["muon"](TinyNet())
    set_lr(opt, 0.25)
    assert all(g["lr"] == pytest.approx(0.25 * g["initial_lr"]) for g in opt.param_groups)
    set_lr(opt, 1.0)
    assert all(g["lr"] == g["initial_lr"] for g in opt.param_groups)


# --- training ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name, args", [("muon", {}), ("adamw", {"lr": 1e-2})])
def test_loss_falls(name, args):
    model = make_model("tiny")
    losses = train(model, OPTIMIZERS[name](model, **args), steps=20)
    assert losses[-1] < 0.05 * losses[0], losses[::4]


@pytest.mark.parametrize("name, args", [("muon", {}), ("adamw", {"lr": 1e-2})])
def test_tiny_gpt_loss_falls(name, args):
    model = tiny_gpt()
    opt = OPTIMIZERS[name](model, **args)
    start = torch.randint(0, 64, (16, 1), generator=torch.Generator().manual_seed(0))
    seq = (start * 7 ** torch.arange(17) + 3 * (7 ** torch.arange(17) - 1) // 6) % 64  # x_{t+1} = 7 x_t + 3 mod 64
    losses = []
    for _ in range(12):
        loss = model(seq[:, :-1], seq[:, 1:])  # (16, 16) inputs and targets
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.05 * losses[0], losses[::3]


def test_muon_alone_fits_a_teacher_network():
    """No embeddings here: both layers are 'matrix' (generic roles), so only Muon's update acts."""
    torch.manual_seed(0)
    A, B = torch.randn(16, 32), torch.randn(32, 4)
    net = nn.Sequential(nn.Linear(16, 64, bias=False), nn.Tanh(), nn.Linear(64, 4, bias=False))
    opt = OPTIMIZERS["muon"](net, matrix_lr=0.05)
    assert [g["kind"] for g in opt.param_groups] == ["muon", "muon"]
    losses = []
    for step in range(40):
        x = torch.randn(256, 16, generator=torch.Generator().manual_seed(step))  # (B, 16)
        loss = (net(x) - torch.tanh(x @ A / 4) @ B).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.25 * losses[0], losses[::5]


@pytest.mark.parametrize("name, other_args", [("muon", {"matrix_lr": 1.0, "momentum": 0.5}), ("adamw", {"lr": 1.0})])
def test_state_dict_round_trip_gives_identical_next_step(name, other_args):
    model = make_model("tiny")
    opt = OPTIMIZERS[name](model)
    train(model, opt, steps=3)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)

    twin = copy.deepcopy(model)
    twin_opt = OPTIMIZERS[name](twin, **other_args)  # hyperparameters come back from the state
    twin_opt.load_state_dict(state)
    assert [g["initial_lr"] for g in twin_opt.param_groups] == [g["initial_lr"] for g in opt.param_groups]
    for m, o in ((model, opt), (twin, twin_opt)):
        x, y = batch(seed=99)
        o.zero_grad(set_to_none=True)
        F.cross_entropy(m(x), y).backward()
        o.step()
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)
