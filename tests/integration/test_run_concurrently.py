"""emoray.runtime.run_concurrently, the pool of Ray tasks behind `emoray evaluate --parallel`
and the accuracy benchmark's encoder comparison, on the session's real local Ray."""

import pytest

from emoray.errors import ClusterError
from emoray.runtime import check_reachable, run_concurrently, split_address

pytestmark = pytest.mark.usefixtures("ray_cluster")


def test_results_come_back_in_call_order_with_at_most_parallel_running():
    addresses = [f"10.0.0.{i}:{6000 + i}" for i in range(5)]
    running = []
    out = run_concurrently(split_address, [((a,), {}) for a in addresses], parallel=2,
                           on_start=lambda i, n: running.append((i, n)))
    assert [result for result, _ in out] == [split_address(a) for a in addresses]
    assert all(seconds >= 0.0 for _, seconds in out)
    assert [i for i, _ in running] == list(range(5))
    assert max(n for _, n in running) == 2 and running[0][1] == 1


def test_a_kept_error_stands_in_its_calls_place_and_any_other_is_raised():
    calls = [(("not an address",), {"source": "RAY_ADDRESS"}), (("auto",), {})]
    out = run_concurrently(check_reachable, calls, parallel=2, keep_errors=(ClusterError,))
    error, _ = out[0]
    assert type(error) is ClusterError and str(error).startswith("RAY_ADDRESS not an address")
    assert out[1][0] is None                          # "auto" is left to Ray: no error
    with pytest.raises(ClusterError, match="RAY_ADDRESS not an address"):
        run_concurrently(check_reachable, calls, parallel=1)
