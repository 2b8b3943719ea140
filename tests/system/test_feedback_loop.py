"""The feedback loop end to end: votes in the real chat app (Chromium) → feedback-export → dpo-finetune
from the champion → promotion → the same running app serves the new champion after a page reload.

The scripted user compares the champion (left: the tiny model after one SFT step) with the base
model (right), both sampling 24 tokens among their 4 likeliest, and picks the reply that contains
MARKER less often: the tiny model's commonest word piece, about 1.5 times in a reply (a tie when
both contain it as often, about one prompt in four). Half the prompts with a pair are held out
whole (at least 8 pairs); DPO from the champion learns the taste from the other half, and on the
held-out prompts the new champion's own replies, sampled as the app samples, contain MARKER at most
a third as often as the old champion's.

The held-out pairs' preference accuracy (chosen over rejected) is printed beside it, not asserted:
it scores the replies' text tokenized anew, and on 8-14 pairs one pair is 7-12 points. Runs where
the new champion never sampled MARKER again still scored 0.58 against 0.50 there.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tasks.chat.history import reply_key
from tests.chat.test_chat_browser import (  # noqa: F401  (browser: the module's Chromium fixture)
    ARTIFACTS,
    browser,
    generation_log,
    open_app,
    send,
    wait_for_bot_count,
    wait_until_idle,
)
from tests.support.chat import free_port
from tests.training.test_lora_flow import COLORS, tiny_overrides, write_tiny_dataset

NAME = "feedback-tiny"
MARKER = "ank"
# 28 prompts: a tie (about one in four) makes no pair, and at least 8 pairs must be held out.
PROMPTS = [f"{start} the color {color}." for start in ("Name", "Describe", "Draw", "Paint") for color in COLORS[:7]]


def wait_for_both_replies(app, limit_s: float = 120) -> set[str]:
    """Until the server's generation log holds both finished replies to the newest message (the
    entries since the last pick: the test has one browser session); their reply fingerprints."""
    deadline, since_pick = time.monotonic() + limit_s, []
    while time.monotonic() < deadline:
        sessions = app.chat_service.sessions
        for session in list(sessions._sessions):
            log = sessions.log(session)
            picks = [i for i, entry in enumerate(log) if "feedback" in entry]
            since_pick = log[picks[-1] + 1 :] if picks else log
            done = [entry for entry in since_pick if entry.get("status") == "done"]
            if len(done) >= 2:
                return {entry["reply_key"] for entry in done}
        time.sleep(0.05)
    raise AssertionError(f"no two finished replies in the generation log since the last pick: {since_pick}")


def shown_replies(page, count: int, keys: set[str], limit_s: float = 60) -> tuple[str, str]:
    """Both sides' newest replies once the page shows what the server finished: their fingerprints
    match the log's (or, should the page render a reply's text differently, once both stay unchanged
    for a moment)."""
    deadline, last, since = time.monotonic() + limit_s, None, time.monotonic()
    while time.monotonic() < deadline:
        texts = page.evaluate(
            """(count) => ['#chat-a', '#chat-b'].map(chat => {
                   if (document.querySelector(chat + ' .pending')) return null;
                   const bots = document.querySelectorAll(chat + ' [data-testid="bot"]');
                   return bots.length >= count ? bots[bots.length - 1].innerText : null; })""",
            count,
        )
        if None not in texts:
            if {reply_key(text) for text in texts} == keys:
                return texts[0], texts[1]
            if texts != last:
                last, since = texts, time.monotonic()
            elif time.monotonic() - since >= 0.3:
                return texts[0], texts[1]
        time.sleep(0.05)
    raise AssertionError(f"the page never showed both finished replies; last seen {last!r}")


def preference_accuracy(adapter_uri: str, rows: list[dict]) -> float:
    """Share of pairs whose chosen reply the adapter's model finds more likely than the rejected one,
    by the mean token log-probability of the reply after the chat-templated prompt.

    The mean, not the sum: a reply's text is tokenized anew, and the random tiny model spreads its
    probability almost evenly (about -6 nats a token), so a summed score would mostly compare how
    many tokens the two texts happen to re-tokenize into."""
    import torch

    from tasks.chat.loading import load_chat_model
    from tasks.core.models import chat_template_ids

    loaded = load_chat_model(adapter_uri)
    model, tokenizer = loaded.model, loaded.tokenizer

    def logp(prompt: list[dict], reply: str) -> float:
        prefix = chat_template_ids(tokenizer, prompt, add_generation_prompt=True)
        reply_ids = tokenizer.encode(reply, add_special_tokens=False)
        ids = torch.tensor([prefix + reply_ids])
        with torch.inference_mode():
            logits = model(input_ids=ids).logits[0, len(prefix) - 1 : -1]
        return float(torch.log_softmax(logits.float(), -1).gather(1, ids[0, len(prefix) :, None]).mean())

    wins = [logp(r["prompt"], r["chosen"][0]["content"]) > logp(r["prompt"], r["rejected"][0]["content"]) for r in rows]
    return sum(wins) / len(wins)


def sampled_marker_rate(adapter_uri: str, rows: list[dict], sampling, replies: int = 8) -> float:
    """MARKER occurrences per reply the adapter's model writes to each row's prompt (its whole
    conversation, as the app saw it), sampled `replies` times with the app's sampling settings."""
    import torch

    from tasks.chat.loading import load_chat_model
    from tasks.core.models import chat_template_ids

    loaded = load_chat_model(adapter_uri)
    model, tokenizer = loaded.model, loaded.tokenizer
    torch.manual_seed(0)
    found = 0
    for row in rows:
        prefix = torch.tensor([chat_template_ids(tokenizer, row["prompt"], add_generation_prompt=True)])
        with torch.inference_mode():
            out = model.generate(
                prefix,
                attention_mask=torch.ones_like(prefix),
                do_sample=True,
                temperature=sampling.temperature,
                top_k=sampling.top_k,
                top_p=sampling.top_p,
                max_new_tokens=sampling.max_new_tokens,
                num_return_sequences=replies,
                pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
            )
        found += sum(tokenizer.decode(seq[prefix.shape[1] :], skip_special_tokens=True).count(MARKER) for seq in out)
    return found / (len(rows) * replies)


@pytest.mark.slow
def test_votes_become_a_champion_the_running_app_serves(browser, chat_model_dir, prefect_harness, tmp_path):  # noqa: F811
    from flows.dpo_finetune import dpo_finetune
    from flows.feedback_export import feedback_export
    from flows.lora_finetune import lora_finetune
    from tasks.chat.config import ChatAppConfig, ServerOptions
    from tasks.chat.feedback.config import FeedbackOptions
    from tasks.chat.sampling import SamplingSettings
    from tasks.chat.server import launch
    from tasks.chat.ui import build_app
    from tasks.publishing import current_champion

    started = time.monotonic()
    phases: dict[str, float] = {}  # seconds each part took: printed, to see where the time goes

    def phase(name: str) -> None:
        phases[name] = round(time.monotonic() - started - sum(phases.values()), 1)

    registry = f"mlflow://{NAME}"
    # The first champion: one SFT step on the (never-ending) tiny model, registered as version 1.
    data = write_tiny_dataset(tmp_path / "colors.jsonl", n=16)
    lora_finetune(overrides=tiny_overrides(chat_model_dir, data, registry, steps=1))
    assert current_champion(NAME).version == "1"
    phase("sft")

    database = f"sqlite:///{tmp_path / 'judgements.db'}"
    config = ChatAppConfig(
        server=ServerOptions(port=free_port(), concurrency_limit=4),
        models=[f"{registry}@champion", str(chat_model_dir)],
        list_registry=False,
        preload=False,
        sampling=SamplingSettings(temperature=1.0, top_k=4, top_p=1.0, repetition_penalty=1.0, max_new_tokens=24),
        feedback=FeedbackOptions(database=database),
    )
    app = build_app(config)
    url = launch(app, config)
    context, page = open_app(browser, url)
    phase("launch")
    try:
        page.check("#compare input")
        page.locator("#pick-left").wait_for(state="visible")
        picked = {"left": 0, "right": 0, "tie": 0}
        for number, prompt in enumerate(PROMPTS, 1):
            send(page, prompt)
            # A pick is judged against the server's log: wait for both finished replies there first.
            left, right = shown_replies(page, number, wait_for_both_replies(app))
            score = right.count(MARKER) - left.count(MARKER)
            verdict = "left" if score > 0 else "right" if score < 0 else "tie"
            picked[verdict] += 1
            page.click(f"#pick-{verdict}")
            deadline = time.monotonic() + 30  # the pick is stored before the page says so
            while app.feedback.store.count() < number and time.monotonic() < deadline:
                time.sleep(0.05)
            assert app.feedback.store.count() == number, page.locator("#feedback-message").inner_text()
        assert app.feedback.store.count() == len(PROMPTS)
        versions_seen = {e.get("served") for e in generation_log(page) if "served" in e}
        assert versions_seen == {f"{registry}/1", str(chat_model_dir)}
        phase("votes")

        exported = feedback_export(overrides=[f"feedback.database={database}", "export.eval_fraction=0.5"])
        assert exported["judgements"] == len(PROMPTS) and exported["ties_dropped"] == picked["tie"]
        assert exported["pairs"] == picked["left"] + picked["right"] and exported["eval_pairs"] >= 8
        phase("export")

        run = dpo_finetune(
            overrides=[
                f"model.name={chat_model_dir}",
                "model.max_length=96",
                "dpo.max_prompt_tokens=64",
                "data.train=feedback",
                f"init_adapter={registry}@champion",
                f"publish.uri={registry}",
                "train.max_steps=30",
                "train.batch_size=4",
                "train.learning_rate=0.03",
                "dpo.beta=0.5",
                "train.lr_scheduler=constant",
                "train.warmup_ratio=0.0",
                f"train.output_dir={tmp_path / 'checkpoints'}",
                "lora.r=8",
                "lora.alpha=16",
                "eval.sample_prompts=[Show the color grey.]",
                "eval.max_new_tokens=8",
            ]
        )
        assert run.champion is not None and run.champion.promoted, run.champion
        assert current_champion(NAME).version == "2"
        phase("dpo")

        # The same app, loaded again (a new page load; Playwright's page.reload() stalls on the page's
        # unload handler): the champion's replies now come from version 2.
        context.close()
        context, page = open_app(browser, url)
        send(page, "Show the color grey.")
        wait_for_bot_count(page, 1, "#chat-a")
        assert wait_until_idle(page, "#chat-a", 0.3).strip()
        served = generation_log(page, until=lambda log: log and log[-1].get("status") == "done")[-1]
        assert served["served"] == f"{registry}/2"
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "feedback-loop.png"), full_page=True)
        phase("reload")
    finally:
        context.close()
        app.close()

    held_out = [json.loads(line) for line in Path(exported["eval_path"]).read_text().splitlines()]
    old, new = preference_accuracy(f"{registry}/1", held_out), preference_accuracy(f"{registry}/2", held_out)
    old_rate = sampled_marker_rate(f"{registry}/1", held_out, config.sampling)
    new_rate = sampled_marker_rate(f"{registry}/2", held_out, config.sampling)
    phase("accuracy")
    print(
        f"feedback loop: {len(PROMPTS)} prompts, picks {picked}, pairs {exported['pairs']} "
        f"(train {exported['train_pairs']}, eval {exported['eval_pairs']}); held-out prompts: '{MARKER}' per "
        f"sampled reply old champion {old_rate:.2f}, new {new_rate:.2f}; held-out preference accuracy "
        f"old {old:.2f}, new {new:.2f}; {time.monotonic() - started:.0f} s {phases}"
    )
    assert old_rate >= 0.5, f"the old champion rarely writes {MARKER!r} ({old_rate:.2f} a reply): no taste to learn"
    # What users see: on prompts DPO never trained on, the disliked word piece is mostly gone.
    assert new_rate <= old_rate / 3, (old_rate, new_rate)
