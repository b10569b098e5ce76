import pytest

from synthaug.data.schema import LabelSchema
from synthaug.data.captions import (
    DEFAULT_TEMPLATES, caption, captions_for_items, check_template, default_template,
)
from synthaug.plan import PlanItem

DIGITS = LabelSchema.single(["zero", "one", "golden_retriever"])
FASHION = LabelSchema.from_dict({
    "pattern": ["floral", "lattice"],
    "sleeve": ["long_sleeve", "sleeveless"],
    "length": ["no_dress", "mini"],
    "neckline": ["v_neckline", "crew"],
    "fabric": ["cotton", "denim"],
    "fit": ["tight", "conventional"],
})


def test_single_label_caption_replaces_underscores():
    assert caption(DIGITS, (2,)) == "a photo of a golden retriever"
    assert caption(DIGITS, (0,), "a handwritten {label} digit") == "a handwritten zero digit"


def test_attribute_caption_follows_the_study_form():
    labels = (1, 1, 0, 0, 0, 1)
    assert default_template(FASHION) == DEFAULT_TEMPLATES["attributes"]
    assert caption(FASHION, labels) == \
        "A person wearing lattice sleeveless no dress v neckline cotton conventional clothes"
    assert caption(FASHION, labels, "a {fabric} top with {neckline}") == "a cotton top with v neckline"


def test_items_keep_their_own_prompt_and_unlabelled_items_get_empty_prompt():
    items = [PlanItem("a", (1,), 0), PlanItem("b", (1,), 1, prompt="custom"), PlanItem("c", None, 2)]
    assert captions_for_items(DIGITS, items) == ["a photo of a one", "custom", ""]


def test_bad_templates_name_the_field():
    with pytest.raises(ValueError, match=r"\{class\}.*attributes"):
        caption(FASHION, (0,) * 6, "a photo of a {class}")
    with pytest.raises(ValueError, match=r"\{colour\}"):
        check_template(DIGITS, "a {colour} thing")
    with pytest.raises(ValueError, match="2 entries"):
        caption(DIGITS, (0, 1))
