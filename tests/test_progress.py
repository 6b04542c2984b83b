from bubblefence_plugin.core.progress import Progress, drive, relay, within


def count(n: int):
    for i in range(n):
        yield Progress(i / n, f"item {i}")
    return n


def test_drive_reports_every_event_and_returns_the_result() -> None:
    seen = []
    assert drive(count(4), lambda f, label: seen.append((f, label))) == 4
    assert seen == [(0.0, "item 0"), (0.25, "item 1"), (0.5, "item 2"), (0.75, "item 3")]
    assert drive(count(2)) == 2


def test_within_maps_a_sub_step_into_its_span() -> None:
    def outer():
        first = yield from within(count(2), 0.0, 0.5)
        second = yield from within(count(2), 0.5, 1.0)
        return first + second

    seen = []
    assert drive(outer(), lambda f, label: seen.append(f)) == 4
    assert seen == [0.0, 0.25, 0.5, 0.75]


def test_relay_yields_what_the_caller_makes_of_each_event() -> None:
    out = list(relay(count(2), lambda e: e.label.upper()))
    assert out == ["ITEM 0", "ITEM 1"]
