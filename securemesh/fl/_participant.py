"""A device's side of a federation, independent of how frames travel.

:class:`Participant` turns ``fl.round_finished`` and ``fl.secagg`` messages into
local training and a :class:`~securemesh.fl.SecAggClient`, and hands the
frames to send to a ``send(msg_type, body, frames)`` callable. The SDK
(``Device.join_federation``) wires it to a connected device; tests can wire
it to anything. Thread-safe (SDK handlers run on worker threads); one round
at a time; a frame for another round is ignored.

``train(global_params) -> (new_params, samples)`` is the user's local
training callback: numpy float64 in, numpy float64 out, same shape.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from securemesh.crypto import Ed25519Signer
from securemesh.errors import DecodeError, LocalError, SecureMeshError
from securemesh.fl._bus import MSG_SECAGG, HERoundBody, JoinBody, RoundBody
from securemesh.fl._config import SecAggConfig
from securemesh.fl._dp import ClientDP
from securemesh.fl._quant import Quantizer
from securemesh.fl._secagg import ClientState, SecAggClient

__all__ = ["Participant", "TrainFn"]

TrainFn = Callable[[npt.NDArray[np.float64]], tuple[npt.NDArray[np.float64], int]]
SendFn = Callable[[str, bytes, Sequence[bytes]], None]
#: ``he_send(aggregator, job_id, values)``: encrypt and contribute (the SDK: ``he_contribute``)
HESendFn = Callable[[str, str, npt.NDArray[np.float64]], None]


class Participant:
    def __init__(
        self,
        node_id: str,
        train: TrainFn,
        send: SendFn,
        *,
        samples: int,
        clock: Callable[[], float] = time.monotonic,
        he_send: HESendFn | None = None,
    ) -> None:
        self.node_id = node_id
        self._train = train
        self._send = send
        self._samples = samples
        self._clock = clock
        self._he_send = he_send
        self._signer = Ed25519Signer.generate()  # this federation's protocol key
        self._lock = threading.Lock()
        self._noise = np.random.default_rng()  # DP noise: OS entropy, never a shared seed
        self._client: SecAggClient | None = None
        self.rounds_done = 0
        self.last_error: str | None = None

    def join_body(self) -> JoinBody:
        return JoinBody(key=self._signer.verify_key.hex(), samples=self._samples)

    @property
    def state(self) -> str:
        with self._lock:
            return "idle" if self._client is None else self._client.state.value

    def on_round(self, body: RoundBody, frames: Sequence[bytes]) -> None:
        """A round starts: train from the global parameters, then advertise keys."""
        if len(frames) != 1 or len(frames[0]) != 8 * (body.length - 1):
            raise DecodeError("fl.round carries the global parameters as one float64 frame")
        if set(body.keys) != set(body.cohort):
            raise DecodeError("fl.round must carry exactly the cohort's keys")
        if self.node_id not in body.cohort:
            raise DecodeError("this device is not in the round's cohort")
        try:
            config = SecAggConfig(
                round_id=bytes.fromhex(body.round_id),
                cohort=tuple(body.cohort),
                length=body.length,
                graph_seed=bytes.fromhex(body.graph_seed),
                bits=body.bits,
                degree=body.degree,
                threshold=body.threshold,
                stage_timeout=body.stage_timeout,
            )
            quant = Quantizer(body.bits, body.clip, body.levels, body.max_clients, body.max_weight)
        except LocalError as exc:
            # the coordinator's parameters (a duplicate in the cohort, a weak
            # threshold, a quantizer that overflows): its fault, not ours
            raise DecodeError(f"fl.round parameters refused: {exc}") from exc
        keys = {c: bytes.fromhex(k) for c, k in body.keys.items()}
        global_params = np.frombuffer(frames[0], dtype="<f8").astype(np.float64)
        new_params, samples = self._train(global_params.copy())
        new_params = np.asarray(new_params, dtype=np.float64)
        if new_params.shape != global_params.shape:
            raise LocalError("the training callback changed the parameter shape")
        delta, weight = self.local_update(
            new_params - global_params,
            samples,
            cohort_size=len(body.cohort),
            max_weight=body.max_weight,
            dp_clip=body.dp_clip,
            noise_multiplier=body.noise_multiplier,
        )
        vector = quant.encode(delta, weight)
        client = SecAggClient(
            config, self.node_id, self._signer, keys, vector=vector, now=self._clock()
        )
        with self._lock:
            self._client = client
            frame = client.start()
        self._send(MSG_SECAGG, b"{}", [frame])

    def local_update(
        self,
        delta: npt.NDArray[np.float64],
        samples: int,
        *,
        cohort_size: int,
        max_weight: int,
        dp_clip: float | None = None,
        noise_multiplier: float | None = None,
    ) -> tuple[npt.NDArray[np.float64], int]:
        """The update and weight this device contributes to the round's sum.

        Without DP: the training delta weighted by the sample count. With
        client-level DP (``dp_clip`` and ``noise_multiplier`` in the round):
        the delta clipped to L2 norm ``dp_clip`` plus this device's share
        N(0, (z C)^2 / m) of the round's noise (m = the cohort size), with
        weight 1 — the DP-FedAvg mean has a fixed denominator, and a sample
        count would be one more thing the sum reveals.
        """
        if dp_clip is None or noise_multiplier is None:
            return delta, max(1, min(int(samples), max_weight))
        dp = ClientDP(clip=dp_clip, noise_multiplier=noise_multiplier)
        return dp.privatize(delta, cohort_size, self._noise), 1

    def on_he_round(self, body: HERoundBody, frames: Sequence[bytes]) -> None:
        """An ``he`` round: train, then contribute ``[n·clip(Δ) ‖ n]`` to the HE job.

        The device weights its own update (the aggregator's job is an
        unweighted sum, so it sees no sample count); the coordinator, the key
        owner, decrypts only the sum. Blocks while encrypting and sending.
        """
        if self._he_send is None:
            raise LocalError("this participant was not given an HE contribution path")
        if len(frames) != 1 or len(frames[0]) != 8 * (body.length - 1):
            raise DecodeError("fl.he_round carries the global parameters as one float64 frame")
        if self.node_id not in body.cohort:
            raise DecodeError("this device is not in the round's cohort")
        global_params = np.frombuffer(frames[0], dtype="<f8").astype(np.float64)
        new_params, samples = self._train(global_params.copy())
        new_params = np.asarray(new_params, dtype=np.float64)
        if new_params.shape != global_params.shape:
            raise LocalError("the training callback changed the parameter shape")
        delta, weight = self.local_update(
            new_params - global_params,
            samples,
            cohort_size=len(body.cohort),
            max_weight=body.max_weight,
            dp_clip=body.dp_clip,
            noise_multiplier=body.noise_multiplier,
        )
        values = np.append(np.clip(delta, -body.clip, body.clip) * weight, float(weight))
        try:
            self._he_send(body.aggregator, body.job_id, values)
        except SecureMeshError as exc:
            self.last_error = str(exc)
            raise
        with self._lock:
            self.rounds_done += 1

    def on_secagg(self, frames: Sequence[bytes]) -> None:
        if len(frames) != 1:
            raise DecodeError("fl.secagg carries one frame")
        with self._lock:
            client = self._client
            if client is None:
                return
            reply = client.receive(bytes(frames[0]), self._clock())
            if client.state is ClientState.DONE:
                self.rounds_done += 1
            elif client.state is ClientState.ABORTED:
                self.last_error = client.abort_reason
        if reply is not None:
            self._send(MSG_SECAGG, b"{}", [reply])
