"""Multi-turn episodes in the one generation engine, and the built-in envs through the real plugin manager.

The engine test builds a tiny random GPT and rlkit's real tokenizer, samples greedily (so the model's turns can
be recomputed without a cache), and counts the episode's tokens and mask by hand: the model's turns mask 1, the
env's replies (rendered by the chat format: <|user_start|> text <|user_end|> <|assistant_start|>) mask 0.
"""
import pytest
import torch

from rlkit.core.errors import RlkitError
from rlkit.lib.envs.env import Step
from rlkit.lib.generation.episodes import Episodes, episode_metrics
from rlkit.lib.generation.sampling import generate
from rlkit.lib.text.tokenizer import Tokenizer, train_tokenizer
from rlkit.plugins.models.gpt_model import GPT, GPTConfig

from experiments import builtin_envs

STOP = 89  # a token the fixture's model samples greedily early on: its turns end there (besides assistant_end)
QUESTION = [{"role": "user", "content": "Guess a number."}]


class StopsAt(Tokenizer):
    """rlkit's tokenizer whose replies also end at STOP, so a random model ends its turns."""

    @property
    def stop_ids(self):
        return [self.token_id("assistant_end"), STOP]


@pytest.fixture(scope="module")
def tokenizer():
    tok = train_tokenizer(["Guess a number. Higher. Lower. Try again. #### 12 the cat sat"] * 20, 300)
    return StopsAt(tok.ranks, tok.pattern, tok.specials)


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    m = GPT(GPTConfig(depth=1, vocab_size=tokenizer.vocab_size, seq_len=96))
    with torch.no_grad():
        for p in [*m.param_roles()["matrix"], m.lm_head.weight]:
            p.normal_(0, 0.4)
    return m


def greedy_until_stop(model, ids, stops, n):
    """Reference: recompute the whole sequence for every new token, argmax, up to a stop token (kept)."""
    ids, out = list(ids), []
    with torch.no_grad():
        while len(out) < n and (not out or out[-1] not in stops):
            out.append(int(model(torch.tensor([ids + out]))[0, -1].argmax()))
    return out


class Scripted:
    """Replies "Try again." to the first turn (reward 0.25), ends after the second (reward 0.5)."""

    def __init__(self):
        self.texts = []

    def reset(self, seed):
        return QUESTION

    def step(self, text):
        self.texts.append(text)
        if len(self.texts) == 1:
            return [{"role": "user", "content": "Try again."}], 0.25, False
        return Step([], 0.5, True)


def test_an_episode_is_one_row_its_env_turns_forced_with_mask_0(model, tokenizer):
    prompts, rows = Episodes(lambda example: Scripted(), 3, "env 'scripted'").start([{}], 2, [7], tokenizer)
    prompt = tokenizer.render_for_completion(QUESTION)
    assert prompts == [prompt]
    out = generate(model, prompts, 2, 40, temperature=0, stop_tokens=tokenizer.stop_ids, envs=rows)
    stops = set(tokenizer.stop_ids)
    turn1 = greedy_until_stop(model, prompt, stops, 40)
    reply = [tokenizer.token_id("user_start"), *tokenizer.encode("Try again."), tokenizer.token_id("user_end"),
             tokenizer.token_id("assistant_start")]
    turn2 = greedy_until_stop(model, prompt + turn1 + reply, stops, 40 - len(turn1) - len(reply))
    assert turn1[-1] == STOP and turn2[-1] in stops and len(turn1) == 27  # the fixture: both turns end at a stop
    for r in range(2):  # both samples of the group: the same greedy episode
        assert out.completions[r] == turn1 + reply + turn2
        pl = len(prompt)
        assert out.mask[r].tolist() == [0] * pl + [1] * 27 + [0] * 7 + [1] * len(turn2)  # 7: reply's tokens
        assert out.ids[r, :pl].tolist() == prompt
        env = rows[r].env
        assert env.texts == [tokenizer.decode(turn1[:-1]), tokenizer.decode([t for t in turn2 if t not in stops])]
        assert rows[r].rewards == [0.25, 0.5] and rows[r].reward == 0.75 and rows[r].done
    metrics = episode_metrics(rows, [len(c) for c in out.completions], 3)
    assert metrics == {"env/turns": 2.0, "env/episode_len": len(out.completions[0]), "env/done": 1.0,
                       "env/reward_turn1": 0.25, "env/reward_turn2": 0.5, "env/reward_turn3": 0.0}


def test_max_turns_ends_the_episode_after_that_many_replies(model, tokenizer):
    prompts, rows = Episodes(lambda example: Scripted(), 1, "env 'scripted'").start([{}], 1, [7], tokenizer)
    out = generate(model, prompts, 1, 40, temperature=0, stop_tokens=tokenizer.stop_ids, envs=rows)
    assert out.completions[0][-1] == STOP and len(out.completions[0]) == 27 and out.mask[0].sum() == 27
    assert rows[0].rewards == [0.25] and not rows[0].done


class Broken(Scripted):
    def step(self, text):
        return {"reward": 1}


def test_an_env_that_breaks_the_contract_stops_with_one_line(model, tokenizer):
    prompts, rows = Episodes(lambda example: Broken(), 3, "env 'broken'").start([{}], 1, [7], tokenizer)
    with pytest.raises(RlkitError, match=r"env 'broken': step\(\) returned dict .*Step\(messages, reward, done\)"):
        generate(model, prompts, 1, 40, temperature=0, stop_tokens=tokenizer.stop_ids, envs=rows)


# --- the built-in envs, through their entry points ---------------------------------------------------

EXAMPLE = {"messages": [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "#### 5"}],
           "answer": "2 + 3 = 5\n#### 5"}


def episode(env, replies, seed=0):
    first, steps = env.reset(seed), []
    for text in replies:
        steps.append(Step(*env.step(text)))
        if steps[-1].done:
            break
    return first, steps


def test_retry_gives_one_more_try_after_a_wrong_answer():
    retry = builtin_envs()["retry"]
    first, steps = episode(retry(EXAMPLE), ["#### 5"])
    assert first == EXAMPLE["messages"][:1] and steps == [Step([], 1.0, True)]
    _, steps = episode(retry(EXAMPLE), ["#### 4", "#### 5"])
    assert steps == [Step([{"role": "user", "content": "That is not right. Try again."}], 0.0, False),
                     Step([], 0.5, True)]
    _, steps = episode(retry(EXAMPLE, retry_reward=0.7), ["#### 4", "#### 6", "#### 5"])
    assert [s.reward for s in steps] == [0.0, 0.0] and steps[-1].done


def test_guess_number_hints_and_binary_search_finds_it():
    guess = builtin_envs()["guess_number"]
    env = guess({}, high=20, guesses=5)
    env.reset(3)
    low, high, turns = 1, 20, 0
    while True:
        mid = (low + high) // 2
        step = Step(*env.step(f"I guess #### {mid}"))
        turns += 1
        if step.done:
            break
        hint = step.messages[0]["content"]
        low, high = (mid + 1, high) if hint == "Higher." else (low, mid - 1)
    assert step.reward == 1.0 and turns <= 5
    env.reset(3)
    assert Step(*env.step("no idea")).messages[0]["content"] == "Answer with #### <number>."
    assert guess({}).reset(3) == guess({}).reset(3)  # the seed fixes the prompt


# --- adapters ----------------------------------------------------------------------------------------------------

def test_an_openenv_protocol_environment_is_an_env(tmp_path, monkeypatch):
    """The in-repo OpenEnv-style Environment (tests/envs_plugins.py), through the real plugin manager: its
    observations' prompt is the user turn, its reward and done the step's; YAML args bind to its constructor."""
    from envs_plugins import OPENENV

    from rlkit.core.plugins import bind_args, load_plugins

    path = tmp_path / "say.py"
    path.write_text(OPENENV)
    monkeypatch.setenv("RLKIT_LOAD_PLUGINS", "")
    factory = load_plugins([path]).tables["env"]["say"]
    assert bind_args("env", "say", factory, {"rounds": 3}, "env.args") == {"rounds": 3}
    with pytest.raises(RlkitError, match="env 'say' does not accept these args.*it takes: rounds=2"):
        bind_args("env", "say", factory, {"round": 3}, "env.args")
    first, steps = episode(factory({}, rounds=3), ["1", "2", "1"], seed=57)
    assert first == [{"role": "user", "content": "say 1, case 7"}]
    assert steps == [Step([{"role": "user", "content": "again"}], 1.0, False),
                     Step([{"role": "user", "content": "again"}], 0.0, False), Step([], 1.0, True)]


def test_textarena_games_keep_their_random_numbers_to_themselves():
    """A game's draws come from its own seeded stream: the global `random` is the same after a game's calls, and a
    game played while another runs in a thread, with the caller drawing too, equals the game played alone."""
    pytest.importorskip("textarena", reason="textarena (the [envs] extra) is not installed: pip install 'rlkit[envs]'")
    import random
    import threading

    textarena = builtin_envs()["textarena"]
    moves = ["[1 2 3 4]", "[2 2 3 3]", "[4 3 2 1]"]

    def play(seed):
        return episode(textarena({}, game="Mastermind-v0"), moves, seed=seed)

    random.seed(123)
    before = random.getstate()
    alone = play(5)
    assert random.getstate() == before  # the caller's random numbers are untouched
    found = {}
    other = threading.Thread(target=lambda: found.setdefault("other", play(6)))
    other.start()
    random.random()
    together = play(5)
    other.join()
    assert together == alone and found["other"] != alone
    assert "Mastermind" in alone[0][0]["content"] and alone[1][0].reward is None


def test_env_mistakes_are_one_line_before_any_work(experiment, cli):
    """An rl entry with both env and rewards, a misspelled env and an env arg it does not take: `rlkit check` says
    which key is at fault and what would be valid."""
    from experiments import RL, without

    def check(**entry):
        path = experiment({"rl": {**without(RL, "rewards"), **entry}})
        result = cli("check", path)
        assert result.exit_code == 1 and "Traceback" not in result.output
        return result.stderr.strip()

    assert check(env={"name": "retry"}, rewards=[{"name": "gsm8k"}]).endswith(
        "stages.rl.rewards: an entry with env: 'retry' is rewarded by its env, in training and in its eval; "
        "leave rewards out")
    assert "stages.rl.env.name: no env plugin named 'retyr' (did you mean 'retry'?" in check(env={"name": "retyr"})
    assert "stages.rl.env.args: env 'retry' does not accept these args" in check(env={"name": "retry",
                                                                                        "args": {"retires": 2}})
    assert "stages.rl.rewards: empty" in check()


def test_the_seeds_task_numbers_train_and_test_rows_apart():
    from rlkit.core.plugins import load_plugins

    seeds = load_plugins().tables["task"]["seeds"]
    train, test = seeds("train", size=50), seeds("test", test_size=10)
    assert [ex["seed"] for ex in train] == list(range(50)) and len(test) == 10
    assert not {ex["seed"] for ex in train} & {ex["seed"] for ex in test}
