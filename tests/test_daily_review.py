"""The daily review form and the day at a glance, without a server: the form's fields, the maps
artifact's and the form's Markdown with their pictures, one colour scale for a day's overlays.
(The form in the UI, through a real server: test_review_ui.py.)"""
import base64
import io


import pytest
from PIL import Image
from pydantic import ValidationError


def picture_of(uri: str) -> Image.Image:
    assert uri.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(uri.removeprefix("data:image/png;base64,"))))


def uris(markdown: str) -> list[str]:
    return [part.split(")")[0] for part in markdown.split("](")[1:] if part.startswith("data:")]


@pytest.fixture
def day(tmp_path):
    """A day of three parts: two flagged (with overlay PNGs 1000 px wide), one normal; a trend plot."""
    folder = tmp_path / "2026-12-01"
    (folder / "musc/maps").mkdir(parents=True)
    rows = []
    for name, score, decision in (("b.png", 0.9, "anomalous"), ("a.png", 0.2, "normal"), ("c.png", 0.95, "anomalous")):
        overlay = folder / "musc/maps" / name
        Image.new("RGB", (1000, 400), (200, 30, 30)).save(overlay)
        rows.append({"path": name, "score": score, "decision": decision, "map_png": f"maps/{name}",
                     "file": folder / name, "map_file": overlay})  # a day's row (musc.reference_pool.day.view)
    rows[1]["thumbnail"] = "data:image/png;base64,AAAA"
    trend = folder / "musc/trend.png"
    Image.new("RGB", (900, 300), "white").save(trend)
    summary = {"day": "2026-12-01", "count": 3, "anomalous": 2, "threshold": 0.5}
    return summary, rows, folder, trend


def test_the_maps_markdown_shows_the_flagged_parts_pictured_then_the_trend_then_the_others(day):
    from musc.reference_pool.daily import maps_markdown
    summary, rows, folder, trend = day
    text = maps_markdown(summary, rows, "fixed", folder, trend)
    flagged = [line for line in text.splitlines() if "| **anomalous** |" in line]
    assert [line.split(" | ")[0] for line in flagged] == ["| c.png", "| b.png"]  # highest score first
    assert "**0.9500**" in flagged[0] and "| 0.5 |" in flagged[0]  # score and threshold beside the picture
    assert "Anomalous at score >= 0.5" in text
    assert text.index("## Flagged parts") < text.index("## Trend") < text.index("## Other parts")
    assert "| a.png | 0.2000 | normal | ![map](data:image/png;base64,AAAA) |" in text
    pictures = [picture_of(uri) for uri in uris(text) if uri != "data:image/png;base64,AAAA"]
    assert [p.size for p in pictures] == [(320, 128), (320, 128), (720, 240)]  # scaled, proportions kept
    assert pictures[0].mode == "P"  # a palette PNG: small enough for the UI


def test_the_review_description_pictures_each_part_the_form_asks_about_in_its_order(day, monkeypatch):
    import musc.reference_pool.daily as daily
    summary, rows, folder, _ = day
    asked = daily.flagged_for_review(rows)
    text = daily.review_markdown(summary, asked, 2, "fixed", folder, folder / "musc")
    assert text.index("**1. c.png**: score **0.9500**") < text.index("**2. b.png**: score **0.9000**")
    assert "a.png" not in text and len(uris(text)) == 2
    assert f"musc review {folder / 'musc'}" in text
    text = daily.review_markdown(summary, asked[:1], 2, "fixed", folder, folder / "musc")  # one reviewed already
    assert "**1. c.png**" in text and "b.png" not in text and "1 more flagged part(s)" in text


def test_the_review_form_asks_per_part_by_its_identity_with_a_note_of_its_own():
    from flows.daily import review_form
    asked = [{"part": "a" * 64, "name": "line/hole 1.png"}, {"part": "b" * 64, "name": "stain.png"}]
    form = review_form(asked)
    schema = form.model_json_schema()["properties"]
    first, second = f"part_{'a' * 16}", f"part_{'b' * 16}"  # named by identity: never by position
    assert list(schema) == [first, f"note_{'a' * 16}", second, f"note_{'b' * 16}", "reviewer"]
    assert [schema[f]["title"] for f in (first, second)] == ["line/hole 1.png", "stain.png"]
    assert schema[first]["enum"] == ["defect", "good", "not reviewed"]
    answer = form(**{second: "good", f"note_{'b' * 16}": "a shadow"})
    assert (getattr(answer, first), getattr(answer, second), answer.reviewer) == ("not reviewed", "good", "")
    with pytest.raises(ValidationError):
        form(**{first: "maybe"})


def test_a_days_overlays_share_one_colour_scale(pool_file, tiny_dataset, tmp_path, monkeypatch):
    import musc.outputs.figures as figures
    from musc.reference_pool import DecisionRule, score_new_images
    from musc.reference_pool.day import part_map
    scales = []
    real = figures.save_overlay
    monkeypatch.setattr(figures, "save_overlay", lambda image, anomaly_map, path, vmin=None, vmax=None, **k: (
        scales.append((vmin, vmax)), real(image, anomaly_map, path, vmin=vmin, vmax=vmax, **k)))
    images = [tiny_dataset / "fabric/test" / name for name in ("good/000.png", "hole/000.png", "stain/001.png")]
    day = score_new_images(pool_file, images, tmp_path / "out", DecisionRule(1.0), device="cpu")
    maps = [part_map(day.record, row["part"]) for row in day.rows]
    assert len(maps) == 3 and len(scales) == 3 and len(set(scales)) == 1
    (low, high), = set(scales)
    assert low == pytest.approx(min(m.min() for m in maps), rel=1e-6)
    assert high == pytest.approx(max(m.max() for m in maps), rel=1e-6)
    assert any(m.max() < high * (1 - 1e-4) for m in maps)  # a cooler part is not stretched to its own maximum
    score_new_images(pool_file, images, tmp_path / "out", DecisionRule(1.0), device="cpu")
    assert len(scales) == 3  # scored again, nothing changed: no overlay drawn again
    hotter = tiny_dataset / "fabric/test/hole/001.png"
    again = score_new_images(pool_file, [hotter], tmp_path / "out", DecisionRule(1.0), device="cpu")
    assert len(again.rows) == 4  # the day's parts: the earlier call's and this one's
    moved = again.map_range != day.map_range  # the day's scale moved: every overlay drawn again on it
    assert len(scales) == 3 + (4 if moved else 1) and set(scales[3:]) == {again.map_range}
