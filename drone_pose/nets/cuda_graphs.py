"""Network passes replayed from CUDA graphs, one graph per input shape, dtype and memory layout.

At the batch sizes a node sees, a heatmap network on a GPU is bound by kernel launches, not by
arithmetic: one graph replay issues the whole pass at once. `GraphedPass` wraps a pure function of
one tensor (images [N,3,H,W] -> heatmaps [N,K,h,w]); on a CUDA input it captures a graph the first
time it sees that input's shape, dtype, strides and device under the caller's grad, inference and
autocast modes (after a few warm-up calls on a side stream, as torch.cuda.graphs requires), then
copies each input into the graph's static input, replays it and returns a copy of the static
output. Other inputs run the function as it is, and so does an input whose capture failed (the
failure is logged once). The function must not synchronise with the host while captured.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

log = logging.getLogger(__name__)
GraphKey = tuple[object, ...]


@dataclass
class _CapturedGraph:
    graph: torch.cuda.CUDAGraph
    static_input: Tensor
    static_output: Tensor


def graph_key(images: Tensor) -> GraphKey:
    """What a captured graph depends on: the input's shape, dtype, strides and device, and the
    grad, inference and CUDA autocast modes it is called under."""
    return (
        tuple(images.shape),
        images.dtype,
        tuple(images.stride()),
        images.device,
        torch.is_grad_enabled(),
        torch.is_inference_mode_enabled(),
        torch.is_autocast_enabled("cuda"),
        torch.get_autocast_dtype("cuda"),
    )


class GraphedPass:
    """`forward` with CUDA-graph replay on CUDA inputs (see the module docstring).

    max_graphs: the most recently used graphs kept (each holds its own activations' memory);
    warm_up: eager calls on a side stream before a capture (cuDNN picks its algorithms there).
    Graphs share one memory pool: safe because every replay's output is copied before the next.
    Not thread-safe: one caller at a time (the estimator's worker).
    """

    def __init__(self, forward: Callable[[Tensor], Tensor], max_graphs: int = 16, warm_up: int = 3) -> None:
        if max_graphs < 1 or warm_up < 1:
            raise ValueError("max_graphs and warm_up must be at least 1")
        self.forward = forward
        self.max_graphs = max_graphs
        self.warm_up = warm_up
        self._graphs: OrderedDict[GraphKey, _CapturedGraph] = OrderedDict()
        self._pool: tuple[int, int] | None = None
        self._failed: set[GraphKey] = set()  # inputs whose capture failed: eager from then on
        self.captures = 0  # graphs captured so far (for tests and benchmarks)

    def __call__(self, images: Tensor) -> Tensor:
        """forward(images), replayed from this input kind's graph on CUDA (captured on first use)."""
        if not images.is_cuda:
            return self.forward(images)
        key = graph_key(images)
        if key in self._failed:
            return self.forward(images)
        captured = self._graphs.get(key)
        if captured is None:
            try:
                captured = self._capture(images, key)
            except RuntimeError as error:  # e.g. an operation that cannot be captured
                log.warning("CUDA graph capture failed for input %s, running eagerly: %s", key[:3], error)
                self._failed.add(key)
                return self.forward(images)
        else:
            self._graphs.move_to_end(key)
        captured.static_input.copy_(images)
        captured.graph.replay()
        return captured.static_output.clone()

    def clear(self) -> None:
        """Drop every graph and its memory (e.g. before the model leaves the GPU)."""
        self._graphs.clear()
        self._failed.clear()
        self._pool = None

    def __len__(self) -> int:
        return len(self._graphs)

    def _capture(self, images: Tensor, key: GraphKey) -> _CapturedGraph:
        static_input = torch.empty_strided(
            images.shape, images.stride(), dtype=images.dtype, device=images.device
        )
        static_input.copy_(images)
        side = torch.cuda.Stream(device=images.device)
        side.wait_stream(torch.cuda.current_stream(images.device))
        with torch.cuda.stream(side):
            for _ in range(self.warm_up):
                self.forward(static_input)
        torch.cuda.current_stream(images.device).wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            static_output = self.forward(static_input)
        captured = _CapturedGraph(graph, static_input, static_output)
        self._graphs[key] = captured
        self.captures += 1
        while len(self._graphs) > self.max_graphs:
            self._graphs.popitem(last=False)
        return captured
