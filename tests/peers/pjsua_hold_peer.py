"""tests/peers/pjsua_peer.py plus what peer-driven mid-call tests need: hold/resume and SIP over TLS.

    python -m tests.peers.pjsua_hold_peer agent|caller ... [--hold-at-s 1.0 --resume-at-s 2.0]
        [--tls-port P --tls-cert C --tls-key K --tls-ca CA]

Hold is PJSIP's own (`Call.setHold`: a re-INVITE with a=sendonly, RFC 3264 8.4) and resume
its own (`Call.reinvite` with PJSUA_CALL_UNHOLD: a=sendrecv). With --tls-port a TLS
transport is added beside the UDP one; dial a `;transport=tls` URI to use it.
"""

from __future__ import annotations

import argparse
import sys
import time

import pjsua2 as pj

from tests.peers import pjsua_peer
from tests.peers.pjsua_peer import Peer, emit

DIRECTIONS = {pj.PJMEDIA_DIR_NONE: "inactive", pj.PJMEDIA_DIR_ENCODING: "sendonly",
              pj.PJMEDIA_DIR_DECODING: "recvonly", pj.PJMEDIA_DIR_ENCODING_DECODING: "sendrecv"}


class HoldCall(pjsua_peer.PeerCall):
    """Reports the media direction after every offer/answer and keeps player/recorder connected."""

    def onCallMediaState(self, prm: pj.OnCallMediaStateParam) -> None:
        super().onCallMediaState(prm)
        info = self.getInfo()
        for index, media in enumerate(info.media):
            if media.type != pj.PJMEDIA_TYPE_AUDIO:
                continue
            emit("media_dir", dir=DIRECTIONS.get(media.dir, str(media.dir)), status=int(media.status),
                 elapsed_s=round(time.monotonic() - (self.peer.media_up_at or time.monotonic()), 3))
            if media.status not in (pj.PJSUA_CALL_MEDIA_ACTIVE, pj.PJSUA_CALL_MEDIA_LOCAL_HOLD,
                                    pj.PJSUA_CALL_MEDIA_REMOTE_HOLD):
                continue
            try:
                audio = self.getAudioMedia(index)
            except pj.Error:
                continue
            # A re-INVITE may rebuild the stream; connecting again is harmless.
            if self.peer.recorder is not None:
                audio.startTransmit(self.peer.recorder)
            if self.peer.player is not None:
                self.peer.player.startTransmit(audio)


pjsua_peer.PeerCall = HoldCall  # the base account and caller construct calls through this name


class HoldPeer(Peer):
    """A pjsua_peer.Peer that can hold, resume and speak TLS."""

    def __init__(self, args: argparse.Namespace) -> None:
        wants_tls = args.transport == "tls"
        if wants_tls:
            args.transport = "udp"
        super().__init__(args)
        self.held = False
        self.resumed = False
        if args.tls_port:
            tls = pj.TransportConfig()
            tls.port = args.tls_port
            tls.boundAddress = "127.0.0.1"
            tls.publicAddress = "127.0.0.1"
            tls.tlsConfig.method = pj.PJSIP_TLSV1_2_METHOD
            if args.tls_cert:
                tls.tlsConfig.certFile = args.tls_cert
                tls.tlsConfig.privKeyFile = args.tls_key
            if args.tls_ca:
                tls.tlsConfig.CaListFile = args.tls_ca
                tls.tlsConfig.verifyServer = True
            self.ep.transportCreate(pj.PJSIP_TRANSPORT_TLS, tls)
            emit("tls_listening", port=args.tls_port)

    def tick(self) -> None:
        super().tick()
        if self.media_up_at is None or self.call is None:
            return
        elapsed = time.monotonic() - self.media_up_at
        if self.args.hold_at_s and not self.held and elapsed >= self.args.hold_at_s:
            self.held = True
            self.call.setHold(pj.CallOpParam(True))
            emit("hold_sent")
        if self.args.resume_at_s and self.held and not self.resumed and elapsed >= self.args.resume_at_s:
            self.resumed = True
            prm = pj.CallOpParam(True)
            prm.opt.flag = pj.PJSUA_CALL_UNHOLD
            self.call.reinvite(prm)
            emit("resume_sent")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=("agent", "caller"))
    parser.add_argument("--sip-port", type=int, required=True)
    parser.add_argument("--rtp-port", type=int, required=True)
    parser.add_argument("--user", default=None)
    parser.add_argument("--target")
    parser.add_argument("--transport", choices=("udp", "tcp", "tls"), default="udp")
    parser.add_argument("--play")
    parser.add_argument("--record")
    parser.add_argument("--send-dtmf", default="")
    parser.add_argument("--dtmf-ms", type=int, default=160)
    parser.add_argument("--dtmf-delay-s", type=float, default=0.5)
    parser.add_argument("--hold-s", type=float, default=0.0, help="caller: hang up this long after media is up")
    parser.add_argument("--srtp", choices=("off", "optional", "mandatory"), default="off")
    parser.add_argument("--timeout-s", type=float, default=30.0)
    parser.add_argument("--hold-at-s", type=float, default=0.0, help="put the call on hold this long after media")
    parser.add_argument("--resume-at-s", type=float, default=0.0, help="take it off hold this long after media")
    parser.add_argument("--tls-port", type=int, default=0)
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    parser.add_argument("--tls-ca", help="verify the TLS server against this CA")
    args = parser.parse_args(argv)
    args.user = args.user or args.role
    if args.role == "caller" and not args.target:
        parser.error("caller needs --target")
    return HoldPeer(args).run()


if __name__ == "__main__":
    sys.exit(main())
