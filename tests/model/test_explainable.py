"""The explainable prompt (hxpe/model/explainable.py): the gate, the phrase slot, phrase encoding and the fuse mode."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

from support.models import tiny


def test_phrase_that_cannot_fit_at_all_is_dropped(caplog: pytest.LogCaptureFixture) -> None:
    """Room for 4 word tokens, a 4-token template: nothing of the phrase fits."""
    from hxpe.model.clip_tower import PromptTokenizer

    tok = PromptTokenizer(tiny("anomalyclip").text.tokenizer.tokenizer, n_slots=71)
    assert tok.room() == 4

    def render(p: str) -> list[str]:
        return [f"one two three four {p}".strip()]

    with caplog.at_level(logging.WARNING):
        assert tok.fit_phrase("deep scratch", render) == ""
        assert tok.fit_phrase("dent", render) == ""
    assert "'deep scratch' -> ''" in caplog.text


def test_gating_removes_the_phrase_from_the_prompt() -> None:
    bank = tiny("anomalyclip").text
    word_ids = set(bank.tokenizer.tokenizer.encode("zebra stripes"))
    with_phrase = bank.tokens("abnormal", "zebra stripes")
    assert word_ids <= set(with_phrase[0].tolist())
    for gated in (None, "", "   "):
        from hxpe.model.explainable import gate

        tokens = bank.tokens("abnormal", gate([gated])[0])
        assert not word_ids & set(tokens[0].tolist())
    assert not word_ids & set(bank.tokens("normal", None)[0].tolist())
    disabled = tiny("anomalyclip", explain={"enabled": False}).text
    with torch.no_grad():
        on = bank(["zebra stripes"])[0, 1]
        off = disabled(["zebra stripes"])[0, 1]
        generic = bank([None])[0, 1]
    assert torch.allclose(off, generic, atol=1e-6)
    assert not torch.allclose(on, generic, atol=1e-4)


def test_distinct_phrases_are_encoded_once() -> None:
    model = tiny("anomalyclip")
    seen: list[int] = []
    hook = model.text.encoder.register_forward_hook(lambda m, a, o: seen.append(a[0].shape[0]))
    try:
        with torch.no_grad():
            text = model.text(["crack", "crack", None, "hole", "crack", None])
    finally:
        hook.remove()
    # one call: 1 normal prompt + 3 distinct abnormal prompts (crack, None, hole), 1 sentence each
    assert seen == [4]
    assert torch.allclose(text[0], text[1]) and torch.allclose(text[0], text[4])
    assert not torch.allclose(text[0, 1], text[3, 1])


def test_long_phrase_is_cut_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    bank = tiny("anomalyclip").text
    long_phrase = " ".join(["scratch"] * 120)
    with caplog.at_level(logging.WARNING):
        tokens = bank.tokens("abnormal", long_phrase)
    assert "cut to CLIP" in caplog.text
    assert tokens.shape == (1, 77)
    assert tokens[0, -1] == 0 or tokens[0].argmax() == 76  # EOT kept inside the context


@pytest.mark.parametrize("lam", [1.0, 0.5])
def test_fuse_mode_formula_only_for_phrased_images(lam: float) -> None:
    fuse = tiny("anomalyclip", explain={"mode": "fuse", "fuse_lambda": lam})
    with torch.no_grad():
        text = fuse.text(["crack", None])
        generic = fuse.text([None, None])
        g_e = fuse.text._phrase_alone(["crack"])[0]
    expected = F.normalize(generic[0, 1] + lam * g_e, dim=-1)
    assert torch.allclose(text[0, 1], expected, atol=1e-5)
    assert torch.allclose(text[1], generic[1], atol=1e-6)
    assert torch.allclose(text[:, 0], generic[:, 0], atol=1e-6)
    assert float(F.cosine_similarity(text[0, 1], g_e, dim=0)) > float(
        F.cosine_similarity(generic[0, 1], g_e, dim=0)
    )


def test_fuse_mode_encodes_each_phrase_alone_through_its_template() -> None:
    fuse = tiny("anomalyclip", explain={"mode": "fuse", "fuse_template": "a photo of {phrase}"})
    enc = fuse.text.encoder
    with torch.no_grad():
        text = fuse.text(["crack", "hole", None, "crack"])
        generic = fuse.text([None])[0, 1]
        tokens = fuse.text.plain_tokenizer(["a photo of crack", "a photo of hole"])
        g_crack, g_hole = enc(tokens)  # the plain text tower, no prompt tokens
    assert torch.allclose(text[0, 1], F.normalize(generic + g_crack, dim=-1), atol=1e-5)
    assert torch.allclose(text[1, 1], F.normalize(generic + g_hole, dim=-1), atol=1e-5)
    assert torch.allclose(text[2, 1], generic, atol=1e-6)
    assert torch.equal(text[3], text[0])


def test_a_phrase_too_long_is_cut_at_token_boundaries_until_it_fits(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Room for 4 word tokens, a 2-token template: the phrase keeps its first 2 tokens."""
    from hxpe.model.clip_tower import PromptTokenizer

    tok = PromptTokenizer(tiny("anomalyclip").text.tokenizer.tokenizer, n_slots=71)

    def render(p: str) -> list[str]:
        return [f"one two {p}".strip(), p]

    with caplog.at_level(logging.WARNING, logger="hxpe.model.clip_tower"):
        assert tok.fit_phrase("deep scratch near the edge", render) == "deep scratch"
        assert tok.fit_phrase("short dent", render) == "short dent"
    assert [r.message for r in caplog.records if r.name == "hxpe.model.clip_tower"] == [
        "Explainable phrase cut to CLIP's 77-token context: 'deep scratch near the edge' -> "
        "'deep scratch'"
    ]


def test_a_template_too_long_is_refused_with_its_first_60_characters() -> None:
    from hxpe.model.clip_tower import PromptTokenizer

    tok = PromptTokenizer(tiny("anomalyclip").text.tokenizer.tokenizer, n_slots=71)  # room 4
    sentence = "a b c d e " + "x" * 70
    with pytest.raises(ValueError) as err:
        tok([sentence])
    n = len(tok.tokenizer.encode(sentence))
    assert str(err.value) == (
        f"Prompt {sentence[:60]!r}... has {n} tokens; at most 4 fit in CLIP's 77-token context. "
        "Shorten the template."
    )
