"""`rlkit export` of the built-in gpt as transformers' NanoChatForCausalLM (rlkit/plugins/models/gpt_export.py):
with `lambdas: false` transformers' logits equal rlkit's and its greedy output and tokenizer match; the
default gpt (learned per-layer lambdas) goes as NanoChat plus remote code (modeling_rlkit_gpt.py) that
transformers loads with trust_remote_code=True, with the same logits and greedy output."""
import pytest
import torch

from rlkit.core.plugins import load_plugins
from rlkit.lib.generation.sampling import generate

from experiments import PRETRAIN, TOKENIZER, adamw, data, experiment_text

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

def gpt_experiment(steps: int, **model) -> str:
    """Run g: tokenizer and `steps` pretrain steps of a depth-2 gpt at seq_len 64; `model` adds model args."""
    return experiment_text(
        {"tokenizer": {**TOKENIZER, "max_chars": 20000, "data": data(200)},
         "pretrain": {**PRETRAIN, "data": data(200), "steps": steps, "total_batch_tokens": 512,
                      "optimizer": adamw(0.01), "eval_tokens": 512}},
        name="g", model={"depth": 2, "seq_len": 64, "dtype": "float32", **model})
PROMPTS = [[{"role": "user", "content": "What is 12 + 7?"}],
           [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tom has 3 apples and buys 4."},
            {"role": "assistant", "content": "#### 7"}, {"role": "user", "content": "And 5 more?"}]]


@pytest.fixture(scope="module")
def tokenizer():
    from rlkit.lib.text.task import example_text
    from rlkit.lib.text.tokenizer import train_tokenizer

    texts = [example_text(ex) for ex in load_plugins().tables["task"]["arithmetic"]("train", size=300)]
    return train_tokenizer(texts, 300)


@pytest.mark.parametrize("lambdas", [False, True])
def test_nanochat_logits_equal_rlkits_for_random_weights(tokenizer, tmp_path, lambdas):
    """Every weight random (the output projections and the lambdas too, which start at zero or one), so
    attention, the rotary sign mapping, the MLP and the x0 mixing all count; 1e-5 in float32 over 60 positions."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = load_plugins().tables["model"]["gpt"](tokenizer, 64, depth=2, lambdas=lambdas).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.1 + (0.5 if p.dim() == 1 else 0))  # lambdas near 0.5: x0 weighs in
    notes = model.export(tmp_path, tokenizer)
    assert bool(notes) == lambdas and all("trust_remote_code=True" in n for n in notes)
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=lambdas).eval()
    assert type(theirs).__name__ == ("RlkitGPTForCausalLM" if lambdas else "NanoChatForCausalLM")
    assert theirs.lm_head.weight.data_ptr() != theirs.model.embed_tokens.weight.data_ptr()  # untied, as ours
    x = torch.randint(0, tokenizer.vocab_size, (3, 60))
    with torch.no_grad():
        ours, hf = model(x), theirs(input_ids=x).logits.float()
    assert ours.shape == hf.shape == (3, 60, tokenizer.vocab_size)
    assert ours.std() > 0.5  # logits that vary: a real comparison
    torch.testing.assert_close(hf, ours, rtol=0, atol=1e-5)


def assert_same_greedy(ours, tok, theirs, their_tok):
    """For each of PROMPTS: transformers' chat template renders rlkit's prompt, and transformers' greedy
    `generate` gives rlkit's greedy tokens, which vary (a trained model, not one token repeated)."""
    for messages in PROMPTS:
        prompt = tok.render_for_completion(messages)
        assert their_tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=False) == prompt
        greedy = generate(ours, [prompt], 1, 16, temperature=0.0, stop_tokens=tok.stop_ids).completions[0]
        hf = theirs.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             do_sample=False, max_new_tokens=16, eos_token_id=tok.stop_ids,
                             pad_token_id=their_tok.pad_token_id)[0, len(prompt):].tolist()
        assert greedy == hf[:len(greedy)] and len(greedy) == len(hf), (greedy, hf)
        assert len(set(greedy)) > 1


def test_export_round_trip_of_a_trained_gpt_greedy_and_tokenizer(tmp_path, cli, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlkit.core import policy
    from rlkit.core.handoff import Checkpoint

    monkeypatch.chdir(tmp_path)
    (tmp_path / "exp.yaml").write_text(gpt_experiment(20, lambdas=False))
    assert cli("run", "exp.yaml").exit_code == 0
    result = cli("export", "runs/g", "out")
    assert result.exit_code == 0, result.stdout + result.stderr
    theirs, their_tok = AutoModelForCausalLM.from_pretrained("out").eval(), AutoTokenizer.from_pretrained("out")
    ours, tok = policy.load(load_plugins(), Checkpoint.open("runs/g"))
    text = "Tom has 12 apples. He eats 5 of them.\n#### 7 (12 - 5 = 7)"
    assert their_tok.encode(text, add_special_tokens=False) == tok.encode(text)
    assert their_tok.decode(tok.encode(text)) == text
    assert_same_greedy(ours, tok, theirs, their_tok)


def test_export_of_the_default_gpt_round_trips_through_remote_code(tmp_path, cli, monkeypatch):
    """The quickstart's model (lambdas on): exported by the CLI, loaded by transformers with trust_remote_code,
    it decodes greedily as rlkit does; without trust_remote_code transformers refuses, as it should."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlkit.core import policy
    from rlkit.core.handoff import Checkpoint

    monkeypatch.chdir(tmp_path)
    (tmp_path / "exp.yaml").write_text(gpt_experiment(20))
    assert cli("run", "exp.yaml").exit_code == 0
    result = cli("export", "runs/g", "out")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert "trust_remote_code=True" in result.stdout + result.stderr
    with pytest.raises(ValueError, match="trust_remote_code"):
        AutoModelForCausalLM.from_pretrained("out", trust_remote_code=False)
    assert "from_pretrained('out', trust_remote_code=True)" in result.stdout
    theirs = AutoModelForCausalLM.from_pretrained("out", trust_remote_code=True).eval()
    their_tok = AutoTokenizer.from_pretrained("out", trust_remote_code=True)
    ours, tok = policy.load(load_plugins(), Checkpoint.open("runs/g"))
    assert not torch.equal(ours.x0_lambdas, torch.zeros_like(ours.x0_lambdas))  # trained: x0 mixing counts
    assert_same_greedy(ours, tok, theirs, their_tok)
