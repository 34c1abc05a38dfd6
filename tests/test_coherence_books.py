"""How the coherence experiment sorts a stale read after the reconnect: *late* (the write that
superseded the value was announced to a subscribed instance; its message was in flight) or *left
behind* (announced while the instance was cut off: lost). Synthetic runs, no Redis: the sorting
depends on the order of recorded events only, never on how long anything took."""

import pandas as pd

from cachelab.experiments.coherence import READ_COLUMNS, _late

START = 100.0  # perf_counter() at the start of the synthetic run


def reads(*rows):
    """Stale reads of instance 1: ``(t_s, key, version)``."""
    rows = [(t, 1, k, v, v + 1, True, 0.0, 1.0) for t, k, v in rows]
    return pd.DataFrame(rows, columns=READ_COLUMNS)


def commit(key, version, sent, done):
    return {"key": key, "version": version, "sent_s": sent, "t_s": done}


def told(*events):
    """Instance 0 heard nothing; instance 1 heard ``(t_s, key)``, on perf_counter()."""
    return [[], [(START + t, key) for t, key in events]]


def test_a_lost_write_later_repaired_by_another_write_was_left_behind_not_late():
    # v1 written at 0.50 while instance 1 was cut off (back at 0.80): its message is gone. v2,
    # written at 1.20 after the reconnect, is announced and reaches instance 1 at 1.21. The read
    # at 1.00 was stale because v1's message was lost, not because it was still on its way.
    commits = [commit("k", 1, 0.50, 0.51), commit("k", 2, 1.20, 1.205)]
    late = _late(reads((1.00, "k", 0)), commits, told((1.21, "k")), [None, START + 0.80], START)
    assert late.tolist() == [False]


def test_a_write_announced_after_the_reconnect_and_heard_after_the_read_is_late():
    commits = [commit("k", 1, 0.90, 0.905)]
    late = _late(reads((0.906, "k", 0)), commits, told((0.95, "k")), [None, START + 0.80], START)
    assert late.tolist() == [True]


def test_an_earlier_writes_late_message_before_the_read_does_not_make_it_left_behind():
    # v1's message reaches instance 1 at 0.903, after v2 was sent (0.90): the read at 0.905
    # still gets v1 and is stale, waiting for v2's message, which comes at 0.91
    commits = [commit("k", 1, 0.89, 0.895), commit("k", 2, 0.90, 0.902)]
    heard = told((0.903, "k"), (0.91, "k"))
    late = _late(reads((0.905, "k", 1)), commits, heard, [None, START + 0.80], START)
    assert late.tolist() == [True]


def test_a_message_that_never_arrives_is_left_behind_even_from_a_subscribed_instance():
    commits = [commit("k", 1, 0.90, 0.905)]
    late = _late(reads((0.95, "k", 0)), commits, told(), [None, START + 0.80], START)
    assert late.tolist() == [False]


def test_a_replaying_log_delivers_what_was_written_during_the_outage_late():
    # Streams replay after the reconnect what was added meanwhile: v1's entry arrives at 1.01
    commits = [commit("k", 1, 0.50, 0.51)]
    args = (reads((1.00, "k", 0)), commits, told((1.01, "k")), [None, START + 0.80], START)
    assert _late(*args, replays=True).tolist() == [True]
    assert _late(*args, replays=False).tolist() == [False]


def test_an_instance_that_was_never_cut_off_heard_every_announcement():
    commits = [commit("k", 1, 0.50, 0.51)]
    late = _late(reads((0.52, "k", 0)), commits, told((0.53, None)), [None, None], START)
    assert late.tolist() == [True]  # a flush after the read counts as hearing of it
