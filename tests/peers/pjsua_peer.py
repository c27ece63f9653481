"""A PJSIP (pjsua2) softphone in its own process: `agent` answers, `caller` dials; scripted by its
arguments, commanded over stdin, reporting JSON lines on stdout.

pjsua2 allows one Endpoint per process, so tests start this script as a subprocess
(tests/peers/pjsua.py). PEERS.md settings: null audio device, threadCnt=0 with
libHandleEvents polled here, codecs PCMU/PCMA only, SIP and RTP bound to 127.0.0.1.

    python -m tests.peers.pjsua_peer agent --sip-port P --rtp-port R [--record out.wav] [--send-dtmf 47]
    python -m tests.peers.pjsua_peer caller --sip-port P --rtp-port R --target sip:agent@127.0.0.1:5060
        [--play in.wav] [--send-dtmf 123#] [--hold-s 3] [--srtp optional|mandatory|off]
        [--transport udp|tcp|tls] [--hold-at-s 1.0 --resume-at-s 2.0]
        [--tls-port P --tls-cert C --tls-key K --tls-ca CA] [--codecs PCMU] [--dtmf-report ends|all]

Hold is PJSIP's own (`Call.setHold`: a re-INVITE with a=sendonly, RFC 3264 8.4) and resume
its own (`Call.reinvite` with PJSUA_CALL_UNHOLD: a=sendrecv). With --tls-port a TLS
transport is added beside the UDP one; dial a `;transport=tls` URI to use it.

When the test decides when things happen, it sends one JSON command per stdin line:

    {"cmd": "play", "path": "x.wav"}     stream a WAV (8 kHz mono 16-bit) into the call
    {"cmd": "dtmf", "digits": "123#", "method": "rfc4733"|"info", "duration_ms": 100}
    {"cmd": "hangup"}

Events carry `t` on the system-wide monotonic clock (a test compares it with its own
time.monotonic()): ready, tls_listening, incoming, state, recording, media, media_dir,
played, dtmf_sent (a count, never the digits), dtmf (received), hold_sent, resume_sent,
hangup_sent, info_response (status of each INFO we sent), info_request (each INFO we
received), disconnected, timeout.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import sys
import threading
import time
from typing import Any

import pjsua2 as pj

SRTP = {"off": pj.PJMEDIA_SRTP_DISABLED, "optional": pj.PJMEDIA_SRTP_OPTIONAL,
        "mandatory": pj.PJMEDIA_SRTP_MANDATORY}
DTMF_IS_END = 2  # pjmedia PJMEDIA_STREAM_DTMF_IS_END, not exported by the SWIG wheel
DTMF_METHODS = {"rfc4733": pj.PJSUA_DTMF_METHOD_RFC2833, "info": pj.PJSUA_DTMF_METHOD_SIP_INFO}
METHOD_NAMES = {v: k for k, v in DTMF_METHODS.items()}
DIRECTIONS = {pj.PJMEDIA_DIR_NONE: "inactive", pj.PJMEDIA_DIR_ENCODING: "sendonly",
              pj.PJMEDIA_DIR_DECODING: "recvonly", pj.PJMEDIA_DIR_ENCODING_DECODING: "sendrecv"}
CONNECTED = (pj.PJSUA_CALL_MEDIA_ACTIVE, pj.PJSUA_CALL_MEDIA_LOCAL_HOLD, pj.PJSUA_CALL_MEDIA_REMOTE_HOLD)


def emit(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, "t": round(time.monotonic(), 4), **fields}), flush=True)


def loopback_transport(port: int) -> pj.TransportConfig:
    """A SIP transport bound to, and advertising, 127.0.0.1:port."""
    cfg = pj.TransportConfig()
    cfg.port = port
    cfg.boundAddress = "127.0.0.1"
    cfg.publicAddress = "127.0.0.1"
    return cfg


class Peer:
    """Everything one softphone process needs: endpoint, account, one call, its media."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.call: PeerCall | None = None
        self.done = False
        self.media_up_at: float | None = None
        self.dtmf_sent = False
        self.held = False
        self.resumed = False
        self.audio: pj.AudioMedia | None = None
        self.recorder: pj.AudioMediaRecorder | None = None
        self.player: pj.AudioMediaPlayer | None = None
        self.stopped_players: list[pj.AudioMediaPlayer] = []
        self.commands: queue.Queue[dict[str, Any]] = queue.Queue()
        self.ep = pj.Endpoint()
        self.ep.libCreate()
        cfg = pj.EpConfig()
        cfg.uaConfig.threadCnt = 0
        cfg.uaConfig.mainThreadOnly = True
        cfg.uaConfig.maxCalls = 4
        cfg.logConfig.level = 1
        cfg.logConfig.consoleLevel = 1
        cfg.medConfig.noVad = args.vad != "on"
        cfg.medConfig.clockRate = 8000
        cfg.medConfig.sndClockRate = 8000
        cfg.medConfig.ecTailLen = 0
        self.ep.libInit(cfg)
        # A TLS caller keeps a UDP transport here; its `;transport=tls` target picks the TLS one.
        kind = pj.PJSIP_TRANSPORT_TCP if args.transport == "tcp" else pj.PJSIP_TRANSPORT_UDP
        self.ep.transportCreate(kind, loopback_transport(args.sip_port))
        self.ep.libStart()
        self.ep.audDevManager().setNullDev()
        codecs = args.codecs.split(",")
        for codec in self.ep.codecEnum2():
            name = codec.codecId.split("/")[0]
            self.ep.codecSetPriority(codec.codecId, 255 - 55 * codecs.index(name) if name in codecs else 0)
        acfg = pj.AccountConfig()
        acfg.idUri = f"sip:{args.user}@127.0.0.1:{args.sip_port}"
        acfg.mediaConfig.transportConfig.port = args.rtp_port
        acfg.mediaConfig.transportConfig.portRange = 10
        acfg.mediaConfig.transportConfig.boundAddress = "127.0.0.1"
        acfg.mediaConfig.transportConfig.publicAddress = "127.0.0.1"
        acfg.mediaConfig.srtpUse = SRTP[args.srtp]
        acfg.mediaConfig.srtpSecureSignaling = 0
        acfg.natConfig.iceEnabled = False
        acfg.natConfig.sdpNatRewriteUse = 0
        acfg.natConfig.viaRewriteUse = 0
        acfg.natConfig.contactRewriteUse = 0
        self.account = PeerAccount(self)
        self.account.create(acfg)
        if args.tls_port:
            self._add_tls()

    def _add_tls(self) -> None:
        tls = loopback_transport(self.args.tls_port)
        tls.tlsConfig.method = pj.PJSIP_TLSV1_2_METHOD
        if self.args.tls_cert:
            tls.tlsConfig.certFile = self.args.tls_cert
            tls.tlsConfig.privKeyFile = self.args.tls_key
        if self.args.tls_ca:
            tls.tlsConfig.CaListFile = self.args.tls_ca
            tls.tlsConfig.verifyServer = True
        self.ep.transportCreate(pj.PJSIP_TRANSPORT_TLS, tls)
        emit("tls_listening", port=self.args.tls_port)

    def run(self) -> int:
        threading.Thread(target=self._read_commands, daemon=True).start()
        emit("ready", role=self.args.role, sip_port=self.args.sip_port)
        if self.args.role == "caller":
            self.call = PeerCall(self, self.account)
            target = self.args.target + (";transport=tcp" if self.args.transport == "tcp" else "")
            self.call.makeCall(target, pj.CallOpParam(True))
        deadline = time.monotonic() + self.args.timeout_s
        while not self.done and time.monotonic() < deadline:
            self.ep.libHandleEvents(5)
            self.tick()
            self._run_commands()
        if not self.done:
            emit("timeout")
        self.shutdown()
        return 0 if self.done else 3

    def tick(self) -> None:
        """Scripted actions after media is up: send DTMF, hang up after --hold-s, hold and resume."""
        if self.media_up_at is None or self.call is None:
            return
        args = self.args
        elapsed = time.monotonic() - self.media_up_at
        if args.send_dtmf and not self.dtmf_sent and elapsed >= args.dtmf_delay_s:
            self.dtmf_sent = True
            self.send_dtmf(args.send_dtmf, "rfc4733", args.dtmf_ms)
        if args.hold_s and elapsed >= args.hold_s and args.role == "caller":
            args.hold_s = 0
            self.call.hangup(pj.CallOpParam(True))
            emit("hangup_sent")
        if args.hold_at_s and not self.held and elapsed >= args.hold_at_s:
            self.held = True
            self.call.setHold(pj.CallOpParam(True))
            emit("hold_sent")
        if args.resume_at_s and self.held and not self.resumed and elapsed >= args.resume_at_s:
            self.resumed = True
            prm = pj.CallOpParam(True)
            prm.opt.flag = pj.PJSUA_CALL_UNHOLD
            self.call.reinvite(prm)
            emit("resume_sent")

    def send_dtmf(self, digits: str, method: str, duration_ms: int) -> None:
        """Key digits into the call; the event says how many, never which (they may be card data)."""
        assert self.call is not None
        prm = pj.CallSendDtmfParam()
        prm.method = DTMF_METHODS[method]
        prm.digits = digits
        prm.duration = duration_ms
        self.call.sendDtmf(prm)
        emit("dtmf_sent", count=len(digits), method=method)

    def play(self, path: str) -> None:
        """Stream a WAV into the call in place of whatever was playing."""
        if self.player is not None:
            self.player.stopTransmit(self.audio)
            self.stopped_players.append(self.player)
        self.player = pj.AudioMediaPlayer()
        self.player.createPlayer(path, pj.PJMEDIA_FILE_NO_LOOP)
        self.player.startTransmit(self.audio)

    def _read_commands(self) -> None:
        # Raw reads: a daemon thread blocked here holds no buffered-stdin lock at interpreter exit.
        pending = b""
        while chunk := os.read(0, 4096):
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
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
            self.play(cmd["path"])
            emit("played", path=cmd["path"])
        elif name == "dtmf" and self.call is not None:
            self.send_dtmf(cmd["digits"], cmd.get("method", "rfc4733"), int(cmd.get("duration_ms", 100)))
        else:
            emit("command_ignored", cmd=name)

    def shutdown(self) -> None:
        try:
            self.recorder = None
            self.player = None
            self.stopped_players.clear()
            self.ep.hangupAllCalls()
            for _ in range(20):
                self.ep.libHandleEvents(10)
        finally:
            self.ep.libDestroy()


class PeerAccount(pj.Account):
    def __init__(self, peer: Peer) -> None:
        super().__init__()
        self.peer = peer

    def onIncomingCall(self, prm: pj.OnIncomingCallParam) -> None:
        call = PeerCall(self.peer, self, prm.callId)
        self.peer.call = call
        info = call.getInfo()
        emit("incoming", remote=info.remoteUri, local=info.localUri)
        answer = pj.CallOpParam(True)
        answer.statusCode = 200
        call.answer(answer)


class PeerCall(pj.Call):
    def __init__(self, peer: Peer, account: pj.Account, call_id: int = pj.PJSUA_INVALID_ID) -> None:
        super().__init__(account, call_id)
        self.peer = peer

    def onCallState(self, prm: pj.OnCallStateParam) -> None:
        info = self.getInfo()
        emit("state", state=info.stateText, code=int(info.lastStatusCode))
        if info.state == pj.PJSIP_INV_STATE_DISCONNECTED:
            emit("disconnected", code=int(info.lastStatusCode), reason=info.lastReason)
            self.peer.done = True

    def onCallMediaState(self, prm: pj.OnCallMediaStateParam) -> None:
        """Connect recorder and player once media is up; report the direction after every offer/answer."""
        peer = self.peer
        info = self.getInfo()
        for index, media in enumerate(info.media):
            if media.type != pj.PJMEDIA_TYPE_AUDIO:
                continue
            if media.status == pj.PJSUA_CALL_MEDIA_ACTIVE:
                self._media_up(index)
            emit("media_dir", dir=DIRECTIONS.get(media.dir, str(media.dir)), status=int(media.status),
                 elapsed_s=round(time.monotonic() - (peer.media_up_at or time.monotonic()), 3))
            if media.status not in CONNECTED:
                continue
            try:
                audio = self.getAudioMedia(index)
            except pj.Error:
                continue
            # A re-INVITE (hold, resume) may rebuild the stream; connecting again is harmless.
            if peer.recorder is not None:
                audio.startTransmit(peer.recorder)
            if peer.player is not None:
                peer.player.startTransmit(audio)

    def _media_up(self, index: int) -> None:
        peer = self.peer
        peer.audio = audio = self.getAudioMedia(index)
        if peer.args.record and peer.recorder is None:
            peer.recorder = pj.AudioMediaRecorder()
            peer.recorder.createRecorder(peer.args.record)
            audio.startTransmit(peer.recorder)
            emit("recording")
        if peer.args.play and peer.player is None:
            peer.player = pj.AudioMediaPlayer()
            peer.player.createPlayer(peer.args.play, pj.PJMEDIA_FILE_NO_LOOP)
            peer.player.startTransmit(audio)
        stream = self.getStreamInfo(index)
        emit("media", codec=stream.codecName, remote=stream.remoteRtpAddress,
             tx_event_pt=int(stream.audTxEventPt), rx_event_pt=int(stream.audRxEventPt), proto=int(stream.proto))
        if peer.media_up_at is None:
            peer.media_up_at = time.monotonic()

    def onDtmfEvent(self, prm: pj.OnDtmfEventParam) -> None:
        # Fires at the start, on updates and at the end of each event; the start is what leaks first.
        end = bool(prm.flags & DTMF_IS_END)
        if end or self.peer.args.dtmf_report == "all":
            emit("dtmf", digit=prm.digit, method=METHOD_NAMES.get(prm.method, str(prm.method)),
                 duration_ms=int(prm.duration), end=end)

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
    parser.add_argument("--target", help="caller: the SIP URI to dial")
    parser.add_argument("--transport", choices=("udp", "tcp", "tls"), default="udp")
    parser.add_argument("--codecs", default="PCMU,PCMA", help="G.711 codecs offered, most preferred first")
    parser.add_argument("--play", help="WAV (8 kHz mono 16-bit) to send as the microphone")
    parser.add_argument("--record", help="WAV to record the received audio into")
    parser.add_argument("--send-dtmf", default="", help="digits to send as RFC 4733 events")
    parser.add_argument("--dtmf-ms", type=int, default=160)
    parser.add_argument("--dtmf-delay-s", type=float, default=0.5)
    parser.add_argument("--dtmf-report", choices=("ends", "all"), default="ends",
                        help="report received DTMF at the end of each event, or at every callback")
    parser.add_argument("--hold-s", type=float, default=0.0, help="caller: hang up this long after media is up")
    parser.add_argument("--hold-at-s", type=float, default=0.0, help="put the call on hold this long after media")
    parser.add_argument("--resume-at-s", type=float, default=0.0, help="take it off hold this long after media")
    parser.add_argument("--srtp", choices=tuple(SRTP), default="off")
    parser.add_argument("--vad", choices=("on", "off"), default="off",
                        help="on: PJSIP's silence detector, which stops sending RTP while the microphone is silent")
    parser.add_argument("--tls-port", type=int, default=0)
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    parser.add_argument("--tls-ca", help="verify the TLS server against this CA")
    parser.add_argument("--timeout-s", type=float, default=30.0)
    args = parser.parse_args(argv)
    args.user = args.user or args.role
    if args.role == "caller" and not args.target:
        parser.error("caller needs --target")
    return Peer(args).run()


if __name__ == "__main__":
    sys.exit(main())
