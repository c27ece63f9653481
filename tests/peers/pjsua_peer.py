"""A PJSIP (pjsua2) softphone in its own process: `agent` answers and records, `caller` dials and plays.

pjsua2 allows one Endpoint per process, so tests start this script as a subprocess
(tests/peers/pjsua.py) and read JSON lines from its stdout. PEERS.md settings: null
audio device, threadCnt=0 with libHandleEvents polled here, codecs PCMU/PCMA only,
SIP and RTP bound to 127.0.0.1.

    python -m tests.peers.pjsua_peer agent --sip-port P --rtp-port R --record out.wav [--send-dtmf 47]
    python -m tests.peers.pjsua_peer caller --sip-port P --rtp-port R --target sip:agent@127.0.0.1:5060
        [--play in.wav] [--send-dtmf 123#] [--srtp optional|mandatory|off] [--transport udp|tcp]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import pjsua2 as pj

SRTP = {"off": pj.PJMEDIA_SRTP_DISABLED, "optional": pj.PJMEDIA_SRTP_OPTIONAL,
        "mandatory": pj.PJMEDIA_SRTP_MANDATORY}
DTMF_IS_END = 2  # pjmedia PJMEDIA_STREAM_DTMF_IS_END, not exported by the SWIG wheel
DTMF_METHODS = {pj.PJSUA_DTMF_METHOD_RFC2833: "rfc4733", pj.PJSUA_DTMF_METHOD_SIP_INFO: "info"}


def emit(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, "t": round(time.monotonic(), 3), **fields}), flush=True)


class Peer:
    """Everything one softphone process needs: endpoint, account, one call, its media."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.call: PeerCall | None = None
        self.done = False
        self.media_up_at: float | None = None
        self.dtmf_sent = False
        self.recorder: pj.AudioMediaRecorder | None = None
        self.player: pj.AudioMediaPlayer | None = None
        self.ep = pj.Endpoint()
        self.ep.libCreate()
        cfg = pj.EpConfig()
        cfg.uaConfig.threadCnt = 0
        cfg.uaConfig.mainThreadOnly = True
        cfg.uaConfig.maxCalls = 4
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
        kind = pj.PJSIP_TRANSPORT_TCP if args.transport == "tcp" else pj.PJSIP_TRANSPORT_UDP
        self.ep.transportCreate(kind, tcfg)
        self.ep.libStart()
        self.ep.audDevManager().setNullDev()
        for codec in self.ep.codecEnum2():
            keep = codec.codecId.split("/")[0] in ("PCMU", "PCMA")
            self.ep.codecSetPriority(codec.codecId, (255 if codec.codecId.startswith("PCMU") else 200) if keep else 0)
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

    def run(self) -> int:
        emit("ready", role=self.args.role, sip_port=self.args.sip_port)
        if self.args.role == "caller":
            self.call = PeerCall(self, self.account)
            prm = pj.CallOpParam(True)
            target = self.args.target + (";transport=tcp" if self.args.transport == "tcp" else "")
            self.call.makeCall(target, prm)
        deadline = time.monotonic() + self.args.timeout_s
        while not self.done and time.monotonic() < deadline:
            self.ep.libHandleEvents(10)
            self.tick()
        if not self.done:
            emit("timeout")
        self.shutdown()
        return 0 if self.done else 3

    def tick(self) -> None:
        """Timed actions after media is up: send DTMF, hang up after --hold-s."""
        if self.media_up_at is None or self.call is None:
            return
        elapsed = time.monotonic() - self.media_up_at
        if self.args.send_dtmf and not self.dtmf_sent and elapsed >= self.args.dtmf_delay_s:
            self.dtmf_sent = True
            prm = pj.CallSendDtmfParam()
            prm.method = pj.PJSUA_DTMF_METHOD_RFC2833
            prm.digits = self.args.send_dtmf
            prm.duration = self.args.dtmf_ms
            self.call.sendDtmf(prm)
            emit("dtmf_sent", digits=self.args.send_dtmf)
        if self.args.hold_s and elapsed >= self.args.hold_s and self.args.role == "caller":
            self.args.hold_s = 0
            self.call.hangup(pj.CallOpParam(True))
            emit("hangup_sent")

    def shutdown(self) -> None:
        try:
            if self.recorder is not None:
                del self.recorder
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
        info = self.getInfo()
        for index, media in enumerate(info.media):
            if media.type != pj.PJMEDIA_TYPE_AUDIO or media.status != pj.PJSUA_CALL_MEDIA_ACTIVE:
                continue
            audio = self.getAudioMedia(index)
            peer = self.peer
            if peer.args.record and peer.recorder is None:
                peer.recorder = pj.AudioMediaRecorder()
                peer.recorder.createRecorder(peer.args.record)
                audio.startTransmit(peer.recorder)
            if peer.args.play and peer.player is None:
                peer.player = pj.AudioMediaPlayer()
                peer.player.createPlayer(peer.args.play, pj.PJMEDIA_FILE_NO_LOOP)
                peer.player.startTransmit(audio)
            stream = self.getStreamInfo(index)
            emit("media", codec=stream.codecName, remote=stream.remoteRtpAddress,
                 tx_event_pt=int(stream.audTxEventPt), rx_event_pt=int(stream.audRxEventPt),
                 proto=int(stream.proto))
            if peer.media_up_at is None:
                peer.media_up_at = time.monotonic()

    def onDtmfEvent(self, prm: pj.OnDtmfEventParam) -> None:
        # Fires at the start, on updates and at the end of each event; only the end is reported.
        if prm.flags & DTMF_IS_END:
            emit("dtmf", digit=prm.digit, method=DTMF_METHODS.get(prm.method, str(prm.method)),
                 duration_ms=int(prm.duration))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=("agent", "caller"))
    parser.add_argument("--sip-port", type=int, required=True)
    parser.add_argument("--rtp-port", type=int, required=True)
    parser.add_argument("--user", default=None)
    parser.add_argument("--target", help="caller: the SIP URI to dial")
    parser.add_argument("--transport", choices=("udp", "tcp"), default="udp")
    parser.add_argument("--play", help="WAV (8 kHz mono 16-bit) to send as the microphone")
    parser.add_argument("--record", help="WAV to record the received audio into")
    parser.add_argument("--send-dtmf", default="", help="digits to send as RFC 4733 events")
    parser.add_argument("--dtmf-ms", type=int, default=160)
    parser.add_argument("--dtmf-delay-s", type=float, default=0.5)
    parser.add_argument("--hold-s", type=float, default=0.0, help="caller: hang up this long after media is up")
    parser.add_argument("--srtp", choices=tuple(SRTP), default="off")
    parser.add_argument("--timeout-s", type=float, default=30.0)
    args = parser.parse_args(argv)
    args.user = args.user or args.role
    if args.role == "caller" and not args.target:
        parser.error("caller needs --target")
    return Peer(args).run()


if __name__ == "__main__":
    sys.exit(main())
