"""The critical-path table: steps in path order, median gaps, time inside the gateway less the backend's."""

from __future__ import annotations

from bench.critical_path import segments, top_functions


def test_segments_are_ordered_along_the_path_with_median_gaps() -> None:
    def record(auth_us: int, backend_us: int) -> dict[str, int]:
        t = 1_000_000
        return {"request": t, "auth>": t + 10_000, "auth<": t + 10_000 + auth_us * 1000,
                "backend_write<": t + 200_000, "backend_reply>": t + 200_000 + backend_us * 1000,
                "client_write": t + 200_000 + backend_us * 1000 + 50_000}

    rows, inside = segments([record(30, 20_000), record(50, 20_100), record(40, 19_900)])
    assert [name for name, _ in rows] == ["request -> auth>", "auth> -> auth<", "auth< -> backend_write<",
                                          "backend_write< -> backend_reply>", "backend_reply> -> client_write"]
    assert dict(rows)["auth> -> auth<"] == 40.0 and dict(rows)["request -> auth>"] == 10.0
    assert inside == 250.0  # 200 us before the backend write + 50 us after its reply


def test_top_functions_are_per_request_medians_over_rounds_without_the_totals() -> None:
    rounds = [{"python": 900, "c": 500, "py a.py:1 f": 300, "c len": 100, "py b.py:9 g": 30},
              {"python": 990, "c": 400, "py a.py:1 f": 330, "c len": 200},
              {"python": 930, "c": 450, "py a.py:1 f": 310, "c len": 150, "py b.py:9 g": 60}]
    assert top_functions(rounds, 100, 2) == [("py a.py:1 f", 3.1), ("c len", 1.5)]
    assert top_functions(rounds, 100, 5)[-1] == ("py b.py:9 g", 0.3)  # absent in a round counts as 0 there
