"""A PJSIP (pjsua2) softphone driven by commands on stdin, for the secure-capture proofs.

Unlike tests/peers/pjsua_peer.py (which follows a fixed script), the test decides
when things happen: it starts a capture through the API, then tells the caller to
play the card or key it. One JSON command per stdin line:

    {"cmd": "play", "path": "x.wav"}     stream a WAV (8 kHz mono 16-bit) into the call
    {"cmd": "dtmf", "digits": "123#", "method": "rfc4733"|"info", "duration_ms": 100}
    {"cmd": "hangup"}

Events are JSON lines on stdout, each with `t` on the system-wide monotonic clock
(the test compares it with its own time.monotonic()): ready, incoming, state, media,
played, dtmf (received), info_response (status of each INFO we sent),
info_request (each INFO we received), disconnected.

    python -m tests.e2e.softphone agent --sip-port P --rtp-port R --record out.wav
    python -m tests.e2e.softphone caller --sip-port P --rtp-port R --target sip:alice@127.0.0.1:5060
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import threading
import time
from typing import Any

import pjsua2 as pj

DTMF_IS_END = 2  # pjmedia PJMEDIA_STREAM_DTMF_IS_END, not exported by the SWIG wheel
DTMF_METHODS = {"rfc4733": pj.PJSUA_DTMF_METHOD_RFC2833, "info": pj.PJSUA_DTMF_METHOD_SIP_INFO}
METHOD_NAMES = {v: k for k, v in DTMF_METHODS.items()}


def emit(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, "t": round(time.monotonic(), 4), **fields}), flush=True)


class Phone:
    """Endpoint, account and the one call, polled from the main thread (threadCnt=0)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.call: PhoneCall | None = None
        self.done = False
        self.audio: pj.AudioMedia | None = None
        self.recorder: pj.AudioMediaRecorder | None = None
        self.players: list[pj.AudioMediaPlayer] = []
        self.commands: queue.Queue[dict[str, Any]] = queue.Queue()
        self.ep = pj.Endpoint()
        self.ep.libCreate()
        cfg = pj.EpConfig()
        cfg.uaConfig.threadCnt = 0
        cfg.uaConfig.mainThreadOnly = True
        cfg.uaConfig.maxCalls = 2
        cfg.logConfig.level = 1
        cfg.logConfig.consoleLevel = 1
        cfg.medConfig.noVad = True
        cfg.medConfig.clockRate = 8000
        cfg.medConfig.sndClockRate = 8000
        cfg.medConfig.ecTailLen = 0
        self.ep.libInit(cfg)
        tcfg = pj.TransportConfig()
        tcfg.port = args.sip_port
        tcfg.boundAddress = "127.0.0.1"
        tcfg.publicAddress = "127.0.0.1"
        self.ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, tcfg)
        self.ep.libStart()
        self.ep.audDevManager().setNullDev()
        for codec in self.ep.codecEnum2():
            self.ep.codecSetPriority(codec.codecId, 255 if codec.codecId.startswith("PCMU/") else 0)
        acfg = pj.AccountConfig()
        acfg.idUri = f"sip:{args.user}@127.0.0.1:{args.sip_port}"
        acfg.mediaConfig.transportConfig.port = args.rtp_port
        acfg.mediaConfig.transportConfig.portRange = 10
        acfg.mediaConfig.transportConfig.boundAddress = "127.0.0.1"
        acfg.mediaConfig.transportConfig.publicAddress = "127.0.0.1"
        acfg.natConfig.iceEnabled = False
        acfg.natConfig.sdpNatRewriteUse = 0
        acfg.natConfig.viaRewriteUse = 0
        acfg.natConfig.contactRewriteUse = 0
        self.account = PhoneAccount(self)
        self.account.create(acfg)

    def run(self) -> int:
        threading.Thread(target=self._read_stdin, daemon=True).start()
        emit("ready", role=self.args.role)
        if self.args.role == "caller":
            self.call = PhoneCall(self, self.account)
            self.call.makeCall(self.args.target, pj.CallOpParam(True))
        deadline = time.monotonic() + self.args.timeout_s
        while not self.done and time.monotonic() < deadline:
            self.ep.libHandleEvents(5)
            self._run_commands()
        if not self.done:
            emit("timeout")
        self.shutdown()
        return 0 if self.done else 3

    def _read_stdin(self) -> None:
        for line in sys.stdin:
            try:
                self.commands.put(json.loads(line))
            except json.JSONDecodeError:
                emit("bad_command")

    def _run_commands(self) -> None:
        while True:
            try:
                cmd = self.commands.get_nowait()
            except queue.Empty:
                return
            try:
                self._command(cmd)
            except pj.Error as exc:
                emit("command_failed", cmd=cmd.get("cmd"), reason=exc.reason)

    def _command(self, cmd: dict[str, Any]) -> None:
        name = cmd.get("cmd")
        if name == "hangup":
            if self.call is not None:
                self.call.hangup(pj.CallOpParam(True))
            else:
                self.done = True
        elif name == "play" and self.audio is not None:
            for old in self.players:
                old.stopTransmit(self.audio)
            player = pj.AudioMediaPlayer()
            player.createPlayer(cmd["path"], pj.PJMEDIA_FILE_NO_LOOP)
            player.startTransmit(self.audio)
            self.players.append(player)
            emit("played", path=cmd["path"])
        elif name == "dtmf" and self.call is not None:
            prm = pj.CallSendDtmfParam()
            prm.method = DTMF_METHODS[cmd.get("method", "rfc4733")]
            prm.digits = cmd["digits"]
            prm.duration = int(cmd.get("duration_ms", 100))
            self.call.sendDtmf(prm)
            emit("dtmf_sent", count=len(cmd["digits"]), method=cmd.get("method", "rfc4733"))
        else:
            emit("command_ignored", cmd=name)

    def shutdown(self) -> None:
        try:
            self.recorder = None
            self.players.clear()
            self.ep.hangupAllCalls()
            for _ in range(20):
                self.ep.libHandleEvents(10)
        finally:
            self.ep.libDestroy()


class PhoneAccount(pj.Account):
    def __init__(self, phone: Phone) -> None:
        super().__init__()
        self.phone = phone

    def onIncomingCall(self, prm: pj.OnIncomingCallParam) -> None:
        call = PhoneCall(self.phone, self, prm.callId)
        self.phone.call = call
        info = call.getInfo()
        emit("incoming", local=info.localUri)
        answer = pj.CallOpParam(True)
        answer.statusCode = 200
        call.answer(answer)


class PhoneCall(pj.Call):
    def __init__(self, phone: Phone, account: pj.Account, call_id: int = pj.PJSUA_INVALID_ID) -> None:
        super().__init__(account, call_id)
        self.phone = phone

    def onCallState(self, prm: pj.OnCallStateParam) -> None:
        info = self.getInfo()
        emit("state", state=info.stateText, code=int(info.lastStatusCode))
        if info.state == pj.PJSIP_INV_STATE_DISCONNECTED:
            emit("disconnected", code=int(info.lastStatusCode))
            self.phone.done = True

    def onCallMediaState(self, prm: pj.OnCallMediaStateParam) -> None:
        info = self.getInfo()
        for index, media in enumerate(info.media):
            if media.type != pj.PJMEDIA_TYPE_AUDIO or media.status != pj.PJSUA_CALL_MEDIA_ACTIVE:
                continue
            phone = self.phone
            phone.audio = self.getAudioMedia(index)
            if phone.args.record and phone.recorder is None:
                phone.recorder = pj.AudioMediaRecorder()
                phone.recorder.createRecorder(phone.args.record)
                phone.audio.startTransmit(phone.recorder)
                emit("recording")
            stream = self.getStreamInfo(index)
            emit("media", codec=stream.codecName, remote=stream.remoteRtpAddress)

    def onDtmfEvent(self, prm: pj.OnDtmfEventParam) -> None:
        # Fires at the start, on updates and at the end; the start is what leaks first.
        emit("dtmf", digit=prm.digit, method=METHOD_NAMES.get(prm.method, str(prm.method)),
             end=bool(prm.flags & DTMF_IS_END))

    def onCallTsxState(self, prm: pj.OnCallTsxStateParam) -> None:
        event = prm.e
        if event.type != pj.PJSIP_EVENT_TSX_STATE:
            return
        tsx = event.body.tsxState.tsx
        if tsx.method != "INFO":
            return
        if tsx.role == pj.PJSIP_ROLE_UAC and tsx.state == pj.PJSIP_TSX_STATE_COMPLETED:
            emit("info_response", code=int(tsx.statusCode))
        elif tsx.role == pj.PJSIP_ROLE_UAS and tsx.state == pj.PJSIP_TSX_STATE_TRYING:
            emit("info_request")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=("agent", "caller"))
    parser.add_argument("--sip-port", type=int, required=True)
    parser.add_argument("--rtp-port", type=int, required=True)
    parser.add_argument("--user", default=None)
    parser.add_argument("--target")
    parser.add_argument("--record")
    parser.add_argument("--timeout-s", type=float, default=60.0)
    args = parser.parse_args(argv)
    args.user = args.user or args.role
    if args.role == "caller" and not args.target:
        parser.error("caller needs --target")
    return Phone(args).run()


if __name__ == "__main__":
    sys.exit(main())
