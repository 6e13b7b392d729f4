"""retrieval.text (content words, white space) and retrieval.choices."""

from retrieval.choices import EXPAND_MODES, EXPANSIONS
from retrieval.text import FILLER, content_words, fold_space, is_short_query


def test_content_words_leave_out_filler():
    assert content_words("A photo of a dog") == ["dog"]
    assert content_words("the a") == [] and content_words(None) == []
    assert content_words("two_dogs, 3 cats!") == ["two", "dogs", "cats"]
    assert "photo" in FILLER


def test_short_queries():
    assert is_short_query("a mammal", 3) and is_short_query("a photo of a dog", 3)
    assert is_short_query("red sports car", 3)
    assert not is_short_query("a dog runs across the green grass", 3) and not is_short_query("the a", 3)
    assert not is_short_query(None, 3)


def test_fold_space_folds_white_space():
    assert fold_space("  a\tdog\n on  grass ") == "a dog on grass"
    assert fold_space(3) == "3"


def test_expand_modes_are_the_expansions_plus_auto():
    assert EXPAND_MODES == ("auto", *EXPANSIONS) and EXPANSIONS == ("none", "mix", "multi")
