"""The runs table's order: best first, on a scale every tokenizer shares."""

from gptlab.runs.results import best_first


def test_compare_puts_the_best_bits_per_character_first_whatever_the_tokenizer() -> None:
    char = {"summary": {"best_val_loss": 2.45, "best_val_bpc": 3.53}}
    bpe = {"summary": {"best_val_loss": 5.26, "best_val_bpc": 2.83}}  # worse per token, better per character
    failed = {"summary": {"error": "diverged"}}
    running = {"summary": None}  # no summary.json yet
    assert best_first([[running], [char], [failed], [bpe]]) == [[bpe], [char], [running], [failed]]
    older = {"summary": {"best_val_loss": 2.0, "best_val_bpc": None}}  # from before bpc: by val_loss
    assert best_first([[char], [older]]) == [[older], [char]]
