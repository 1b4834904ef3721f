"""The report pages' HTML: text is escaped, images are linked by quoted relative names, and a page
is written whole."""

from __future__ import annotations

from common_blocks.reports.html import colour_legend, figure_html, section_html, write_page


def test_a_page_escapes_its_text_and_links_its_figures(tmp_path):
    body = section_html("<worst> images", figure_html("class 1 & 2.png", 'a "quoted" caption'))
    path = write_page(tmp_path, "Report <ensemble>", body + colour_legend(with_prediction=True))
    page = path.read_text(encoding="utf-8")
    assert path == tmp_path / "index.html" and [p.name for p in tmp_path.iterdir()] == ["index.html"]
    assert "<title>Report &lt;ensemble&gt;</title>" in page and "<h2>&lt;worst&gt; images</h2>" in page
    assert 'src="class%201%20%26%202.png"' in page and "a &quot;quoted&quot; caption" in page
    assert "prediction (inside its mask)" in page


def test_the_colour_key_without_predictions_shows_the_truth_only():
    assert "truth" in colour_legend(with_prediction=False)
    assert "prediction" not in colour_legend(with_prediction=False)
