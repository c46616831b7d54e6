from services.kit.events import Progress


def test_a_consumer_is_current_only_within_the_window_after_it_caught_up():
    now = [100.0]
    progress = Progress(clock=lambda: now[0])
    assert not progress.current(5)          # never caught up yet (starting, or replaying)
    progress.caught_up()
    now[0] = 105.0
    assert progress.current(5)
    now[0] = 105.5
    assert not progress.current(5)
