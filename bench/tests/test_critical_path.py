"""The critical-path table: steps in path order, median gaps, time inside the gateway less the backend's."""

from __future__ import annotations

from bench.critical_path import segments


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
