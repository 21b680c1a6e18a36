"""SeenFrames: which frames a client need not open again before a batch (bounded)."""

from __future__ import annotations

from dreamcatcher_pg.append import SeenFrames


def test_a_frame_is_unseen_until_added_and_the_set_stays_bounded() -> None:
    seen = SeenFrames()
    assert seen.unseen([1])
    seen.add([1, 2])
    assert not seen.unseen([2, 1]) and seen.unseen([1, 3])
    seen.add(list(range(10, 10 + SeenFrames.LIMIT - 2)))  # exactly full: nothing forgotten
    assert not seen.unseen([1, 2, 10])
    seen.add([99_999])  # over the limit: it starts again with the new frames only
    assert not seen.unseen([99_999]) and seen.unseen([1]) and seen.unseen([10])
