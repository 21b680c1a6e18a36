"""A newcomer's first minute, in Chromium: ``dreamcatcher demo --web``, then the inspector.

Every check compares what the page shows with what PostgreSQL holds. The tests
run in order on one demo world; the last one writes a new frame.
"""

from __future__ import annotations

import re
import time
from typing import Any

from playwright.sync_api import expect

from dreamcatcher_pg import DeltaClient
from tests.support.browserkit import Demo, query, run_async, shot

TIMEOUT = 15_000  # ms: what a slow, shared CI machine may need for a page to settle


def open_view(page: Any, demo: Demo, view: str, **params: object) -> None:
    query_string = "&".join(f"{k}={v}" for k, v in {"world": demo.world, **params}.items())
    page.goto(f"{demo.url}#/{view}?{query_string}")
    expect(page.locator("#live")).to_have_text("● live", timeout=TIMEOUT)


def shown_titles(page: Any) -> dict[str, str]:
    """key -> title of the post rows of the state table (read at once: the table may be redrawn)."""
    pairs = page.eval_on_selector_all(
        "#state-table tbody tr[data-key]",
        """rows => rows.map(row => [row.dataset.key,
                                    row.querySelector('.chip[data-field="title"]')?.title ?? null])""",
    )
    return dict(pairs)


def titles_at(demo: Demo, frame: int) -> dict[str, str]:
    rows = query(
        demo.dsn,
        "SELECT ekey, data->>'title' FROM dreamcatcher.entities_at(%s, 'post', %s) ORDER BY ekey LIMIT 50",
        demo.world,
        frame,
    )
    return {key: title for key, title in rows}


def wait_for_frame(page: Any, frame: int) -> None:
    expect(page.locator("#frame-label")).to_have_text(str(frame), timeout=TIMEOUT)
    expect(page.locator("#state-frame")).to_have_text(str(frame), timeout=TIMEOUT)


def wait_for_titles(page: Any, expected: dict[str, str]) -> None:
    deadline = time.monotonic() + TIMEOUT / 1000
    while shown_titles(page) != expected:
        assert time.monotonic() < deadline, (shown_titles(page), expected)
        page.wait_for_timeout(100)


def test_the_demo_opens_on_its_world(page: Any, demo_web: Demo) -> None:
    open_view(page, demo_web, "worlds")
    row = page.locator(f'#worlds-table tr[data-world="{demo_web.world}"]')
    expect(row).to_be_visible(timeout=TIMEOUT)
    merged = query(
        demo_web.dsn,
        "SELECT count(*), max(frame) FROM dreamcatcher.frames WHERE world = %s AND status = 'merged'",
        demo_web.world,
    )[0]
    cells = row.locator("td")
    assert cells.nth(3).inner_text() == str(merged[0]) and cells.nth(4).inner_text() == str(merged[1])
    quarantined = query(
        demo_web.dsn, "SELECT count(*) FROM dreamcatcher.quarantine WHERE world = %s", demo_web.world
    )
    assert cells.nth(7).inner_text() == str(quarantined[0][0])
    expect(page.locator("#latest-frame")).to_have_text(str(demo_web.last_frame))
    shot(page, "00-worlds")


def test_moving_the_slider_changes_the_state(page: Any, demo_web: Demo) -> None:
    last = demo_web.last_frame
    open_view(page, demo_web, "frames", kind="post")
    wait_for_frame(page, last)
    wait_for_titles(page, titles_at(demo_web, last))
    expect(page.locator("#timeline svg rect.bar")).to_have_count(last + 1, timeout=TIMEOUT)
    shot(page, "01-time-travel")

    # the arrow keys step through frames
    page.locator("#frame-slider").focus()
    page.keyboard.press("ArrowLeft")
    wait_for_frame(page, last - 1)
    wait_for_titles(page, titles_at(demo_web, last - 1))
    page.locator("body").click(position={"x": 5, "y": 880})
    page.keyboard.press("ArrowLeft")
    wait_for_frame(page, last - 2)
    wait_for_titles(page, titles_at(demo_web, last - 2))

    # dragging the slider to the start
    slider = page.locator("#frame-slider")
    box = slider.bounding_box()
    page.mouse.click(box["x"] + 2, box["y"] + box["height"] / 2)
    wait_for_frame(page, 0)
    early = titles_at(demo_web, 0)
    wait_for_titles(page, early)
    assert early != titles_at(demo_web, last)  # the state did change
    shot(page, "02-time-travel-frame-0")

    # the chart selects a frame too
    page.locator(f'#timeline rect.bar[data-frame="{last - 3}"]').click()
    wait_for_frame(page, last - 3)
    wait_for_titles(page, titles_at(demo_web, last - 3))


def test_searching_the_state(page: Any, demo_web: Demo) -> None:
    open_view(page, demo_web, "frames", kind="post", frame=demo_web.last_frame)
    page.fill("#state-search input[name=field]", "title")
    page.fill("#state-search input[name=value]", "stream-02")
    page.click("#state-search button[type=submit]")
    expected = {k: t for k, t in titles_at(demo_web, demo_web.last_frame).items() if "stream-02" in t}
    assert expected
    wait_for_titles(page, expected)
    expect(page.locator("#state-status")).to_contain_text("(all)")


def test_a_diff_between_two_frames(page: Any, demo_web: Demo) -> None:
    a, b = 2, 5
    open_view(page, demo_web, "diff", kind="post")
    page.fill("#diff-a", str(a))
    page.fill("#diff-b", str(b))
    page.click("#diff-form button[type=submit]")
    expected = query(
        demo_web.dsn,
        "SELECT ekey, change FROM dreamcatcher.entity_changes(%s, %s, %s) WHERE kind = 'post' ORDER BY ekey",
        demo_web.world,
        a,
        b,
    )
    assert expected
    counts = {
        change: sum(1 for _, c in expected if c == change) for change in ("added", "changed", "removed")
    }
    # the view showed the default diff first: wait for this one's summary, then read its rows at once
    expect(page.locator("#diff-summary")).to_contain_text(
        f"post: {counts['added']} added, {counts['changed']} changed, {counts['removed']} removed"
        f" · frame {a} → {b}",
        timeout=TIMEOUT,
    )
    rows = page.locator("#diff-table tbody tr[data-key]")
    expect(rows).to_have_count(len(expected), timeout=TIMEOUT)
    shown = page.eval_on_selector_all(
        "#diff-table tbody tr[data-key]", "rows => rows.map(r => [r.dataset.key, r.dataset.change])"
    )
    assert [tuple(r) for r in shown] == [tuple(r) for r in expected]
    changed = page.locator('#diff-table tr[data-change="changed"] ul.fields li').first
    expect(changed).to_contain_text("→")
    shot(page, "03-diff")


def test_an_entity_history_with_blame(page: Any, demo_web: Demo) -> None:
    open_view(page, demo_web, "frames", kind="post", frame=demo_web.last_frame)
    most_versions = (
        "SELECT ekey FROM dreamcatcher.entity_versions WHERE world = %s AND kind = 'post'"
        " GROUP BY ekey ORDER BY count(*) DESC, ekey LIMIT 1"
    )
    key = query(demo_web.dsn, most_versions, demo_web.world)[0][0]
    page.locator(f'#state-table tr[data-key="{key}"] td.key a').click()
    expect(page.locator("#entity-head")).to_contain_text(
        f"post {key} right after frame {demo_web.last_frame}"
    )
    current = query(
        demo_web.dsn,
        "SELECT data, valid_from FROM dreamcatcher.entity_versions"
        " WHERE world = %s AND kind = 'post' AND ekey = %s AND valid_to IS NULL",
        demo_web.world,
        key,
    )[0]
    data, since = current
    fields = page.locator("#blame-table tbody tr")
    expect(fields).to_have_count(len(data), timeout=TIMEOUT)
    title_row = page.locator('#blame-table tr[data-field="title"]')
    expect(title_row).to_contain_text(data["title"])
    # the title was set by the last delta of its frame carrying it: the stream is in the title
    writer = re.search(r"by (stream-\d+) at frame (\d+)", data["title"])
    assert writer is not None
    expect(title_row.locator("td").nth(3)).to_contain_text(writer.group(1))
    expect(title_row.locator("td").nth(2)).to_have_text(str(since))
    versions = query(
        demo_web.dsn,
        "SELECT count(*) FROM dreamcatcher.entity_versions WHERE world = %s AND kind = 'post' AND ekey = %s",
        demo_web.world,
        key,
    )[0][0]
    expect(page.locator("#history .version")).to_have_count(min(versions, 20), timeout=TIMEOUT)
    expect(page.locator("#history .version").first).to_contain_text("current")
    shot(page, "04-entity")


def test_quarantine_and_late_attempts(page: Any, demo_web: Demo) -> None:
    open_view(page, demo_web, "quarantine")
    rows = query(
        demo_web.dsn,
        "SELECT reason FROM dreamcatcher.quarantine WHERE world = %s ORDER BY id DESC",
        demo_web.world,
    )
    shown = page.locator("#quarantine-table tbody tr")
    expect(shown).to_have_count(min(len(rows), 50), timeout=TIMEOUT)
    expect(shown.first.locator(".reason")).to_have_text(rows[0][0])
    shot(page, "05-quarantine")
    open_view(page, demo_web, "late")
    expect(page.locator("#view-late")).to_contain_text("none")


def test_a_new_frame_appears_live(page: Any, demo_web: Demo) -> None:
    open_view(page, demo_web, "frames", kind="post")
    wait_for_frame(page, demo_web.last_frame)
    frame = demo_web.last_frame + 1

    async def write() -> float:
        async with DeltaClient.connect(demo_web.dsn, stream_id="a-worker", world=demo_web.world) as dc:
            await dc.insert_delta(frame, {"posts_created": [{"number": 5000, "title": "written live"}]})
            await dc.close_frame(frame)
            await dc.wait_merged(frame, timeout=30)  # the merger of demo --web merges it
        return time.monotonic()

    merged = run_async(write())
    expect(page.locator("#latest-frame")).to_have_text(str(frame), timeout=TIMEOUT)
    shown_after = time.monotonic() - merged
    assert shown_after < 2.0, f"the new frame showed {shown_after:.2f} s after its merge"
    wait_for_frame(page, frame)  # "follow new frames" moved the view
    expect(page.locator('#state-table tr[data-key="5000"]')).to_contain_text("written live")
    expect(page.locator("#timeline svg rect.bar")).to_have_count(frame + 1)
    expect(page.locator(".toast")).to_contain_text(f"frame {frame} merged")
    shot(page, "06-live")
