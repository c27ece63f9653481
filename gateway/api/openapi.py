"""The agent API's OpenAPI 3.1 document (DESIGN.md contract 4), served at /openapi.json."""

from __future__ import annotations

from typing import Any

import gateway

CAPTURE_FIELDS = ("pan", "expiry", "cvv", "postcode")
CAPTURE_STATES = ("collecting", "tokenizing", "tokenized", "failed", "cancelled")


def _error_response(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _errors(*codes: int) -> dict[str, Any]:
    descriptions = {
        400: "Malformed request body",
        401: "Missing, expired, forged or wrong-audience token",
        403: "The token's role or agent may not do this",
        404: "No such call or capture",
        409: "A capture is already active on this call",
        413: "Request body larger than 16 KiB",
        415: "Request body is not application/json",
        422: "The capture was refused (e.g. the call's codec cannot be inspected)",
        429: "Rate limited; see Retry-After",
        500: "The keys could not be re-read; the old ones stay in use",
    }
    return {str(code): _error_response(descriptions[code]) for code in codes}


def _json(schema_ref: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema_ref}"}}},
    }


CAPTURE_ID = {
    "name": "capture_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "minLength": 1, "maxLength": 256},
}
CALL_ID = {
    "name": "call_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "minLength": 1, "maxLength": 256},
}
AUTHED = [{"bearer": []}]
PUBLIC: list[dict[str, list[str]]] = []


def openapi_document() -> dict[str, Any]:
    """A fresh OpenAPI 3.1 document for this build."""
    document = _document()
    # Every path answers other methods 405 with Allow (RFC 9110 15.5.6), and any operation may
    # meet an internal fault (500, `{"error": "internal"}`; the message is never echoed).
    for item in document["paths"].values():
        for operation in item.values():
            responses = operation["responses"]
            responses.setdefault("405", {**_error_response("Method not allowed on this path"),
                                         "headers": {"Allow": {"schema": {"type": "string"}}}})
            responses.setdefault("500", _error_response("Internal error"))
    return document


def _document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Tonewall agent API",
            "version": gateway.__version__,
            "description": (
                "Start and follow secure card captures on live calls. Progress never "
                "carries a card digit except the last four after the PAN validates."
            ),
        },
        "servers": [{"url": "/"}],
        "security": AUTHED,
        "paths": {
            "/v1/calls": {
                "get": {
                    "operationId": "listCalls",
                    "summary": "Active calls the token holder may see",
                    "responses": {
                        "200": _json("CallList", "Calls"),
                        **_errors(401, 403, 429),
                    },
                }
            },
            "/v1/calls/{call_id}/captures": {
                "post": {
                    "operationId": "startCapture",
                    "summary": "Start a secure capture; masking is on before the answer",
                    "parameters": [CALL_ID],
                    "requestBody": {
                        "required": False,
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/CaptureRequest"}
                            }
                        },
                    },
                    "responses": {
                        "201": {
                            **_json("Capture", "Capture started"),
                            "headers": {
                                "Location": {
                                    "description": "The capture resource",
                                    "schema": {"type": "string"},
                                }
                            },
                        },
                        **_errors(400, 401, 403, 404, 409, 413, 415, 422, 429),
                    },
                }
            },
            "/v1/captures/{capture_id}": {
                "get": {
                    "operationId": "getCapture",
                    "summary": "A capture's state, brand, last four and token",
                    "parameters": [CAPTURE_ID],
                    "responses": {
                        "200": _json("Capture", "The capture"),
                        **_errors(401, 403, 404, 429),
                    },
                },
                "delete": {
                    "operationId": "cancelCapture",
                    "summary": "Cancel a capture (no effect once it has ended)",
                    "parameters": [CAPTURE_ID],
                    "responses": {
                        "200": _json("Capture", "The capture after the cancel"),
                        **_errors(401, 403, 404, 429),
                    },
                },
            },
            "/v1/captures/{capture_id}/events": {
                "get": {
                    "operationId": "captureEvents",
                    "summary": "Server-sent events of masked progress",
                    "description": (
                        "text/event-stream. `event: state` first (the capture as in "
                        "getCapture), then `event: progress` per change, comment lines "
                        "(`: keepalive`) as heartbeats, and `event: end` with the final "
                        "capture, after which the stream closes."
                    ),
                    "parameters": [CAPTURE_ID],
                    "responses": {
                        "200": {
                            "description": "Event stream",
                            "content": {"text/event-stream": {"schema": {"type": "string"}}},
                        },
                        **_errors(401, 403, 404, 429),
                    },
                }
            },
            "/v1/admin/keys/reload": {
                "post": {
                    "operationId": "reloadKeys",
                    "summary": "Re-read the token verification keys (admin, MFA)",
                    "responses": {
                        "200": _json("Status", "Reloaded"),
                        **_errors(401, 403, 429, 500),
                    },
                }
            },
            "/healthz": {
                "get": {
                    "operationId": "health",
                    "summary": "The process is up",
                    "security": PUBLIC,
                    "responses": {"200": _json("Status", "Up")},
                }
            },
            "/readyz": {
                "get": {
                    "operationId": "ready",
                    "summary": "Ready to take calls (SIP up)",
                    "description": "Readiness is about calls: a processor outage does not take the gateway "
                                   "out of a load balancer (calls keep flowing; captures fail closed and tell "
                                   "the agent). Watch tonewall_captures_total{outcome=\"failed\"} and "
                                   "tonewall_tokenization_errors_total for the processor.",
                    "security": PUBLIC,
                    "responses": {
                        "200": _json("Status", "Ready"),
                        "503": _json("Status", "Not ready"),
                    },
                }
            },
            "/": {
                "get": {
                    "operationId": "console",
                    "summary": "The agent console (HTML; it calls this API with the agent's token)",
                    "security": PUBLIC,
                    "responses": {
                        "200": {"description": "The console page", "content": {"text/html": {"schema": {"type": "string"}}}}
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document",
                    "security": PUBLIC,
                    "responses": {
                        "200": {
                            "description": "OpenAPI 3.1 document",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
        },
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error", "reason"],
                    "properties": {
                        "error": {"type": "string", "examples": ["unauthorized"]},
                        "reason": {"type": "string", "examples": ["token expired"]},
                    },
                },
                "Status": {
                    "type": "object",
                    "required": ["status"],
                    "properties": {"status": {"type": "string"}},
                },
                "Call": {
                    "type": "object",
                    "required": ["call_id", "agent", "caller", "state", "started_at"],
                    "properties": {
                        "call_id": {"type": "string"},
                        "agent": {
                            "type": "string",
                            "description": "User part of the agent leg's URI",
                        },
                        "caller": {"type": "string"},
                        "state": {"type": "string"},
                        "started_at": {
                            "type": ["string", "null"],
                            "format": "date-time",
                        },
                    },
                },
                "CallList": {
                    "type": "object",
                    "required": ["calls"],
                    "properties": {
                        "calls": {"type": "array", "items": {"$ref": "#/components/schemas/Call"}}
                    },
                },
                "CaptureRequest": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "fields": {
                            "type": "array",
                            "items": {"enum": list(CAPTURE_FIELDS)},
                            "minItems": 1,
                            "maxItems": len(CAPTURE_FIELDS),
                            "uniqueItems": True,
                            "default": ["pan", "expiry", "cvv"],
                            "description": "Must include pan; in keying order pan, expiry, cvv, postcode",
                        }
                    },
                },
                "Capture": {
                    "type": "object",
                    "required": ["capture_id", "call_id", "state"],
                    "properties": {
                        "capture_id": {"type": "string"},
                        "call_id": {"type": "string"},
                        "agent": {"type": ["string", "null"]},
                        "fields": {"type": "array", "items": {"enum": list(CAPTURE_FIELDS)}},
                        "state": {"enum": list(CAPTURE_STATES)},
                        "brand": {"type": ["string", "null"]},
                        "last4": {"type": ["string", "null"], "pattern": "^[0-9]{4}$"},
                        "token": {"type": ["string", "null"]},
                        "reason": {"type": ["string", "null"]},
                    },
                },
            },
        },
    }
