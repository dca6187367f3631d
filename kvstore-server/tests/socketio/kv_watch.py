"""The watch loop of the replaced service's `kv watch`, for the Socket.IO tests.

Like that CLI it connects with python-socketio, prints `connected to server` on
connect and then every `key_update` payload (here as JSON, to compare exactly).
For the tests it also prints the transport in use, the `connected` and
`key_delete` events, refusals and disconnects, one line each.
"""

import argparse
import json
import sys
import threading

import socketio

# Handlers run on the client's threads: one line at a time, whole.
_lock = threading.Lock()


def say(line):
    with _lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


parser = argparse.ArgumentParser()
parser.add_argument("url")
parser.add_argument("--transports", help="e.g. websocket (default: polling, then upgrade)")
parser.add_argument("--auth-token", help="sent in the CONNECT auth payload")
parser.add_argument("--header-token", help="sent as Authorization: Bearer")
args = parser.parse_args()

sio = socketio.Client()


@sio.event
def connect():
    say("connected to server")


@sio.event
def connect_error(data):
    say("connect_error " + json.dumps(data))


@sio.event
def disconnect():
    say("disconnected")


@sio.on("connected")
def on_connected(data):
    say("connected " + json.dumps(data))


@sio.on("key_update")
def on_key_update(data):
    say(json.dumps(data))


@sio.on("key_delete")
def on_key_delete(data):
    say("key_delete " + json.dumps(data))


headers = {}
if args.header_token:
    headers["Authorization"] = "Bearer " + args.header_token
auth = {"token": args.auth_token} if args.auth_token else None
transports = args.transports.split(",") if args.transports else None
try:
    sio.connect(args.url, headers=headers, auth=auth, transports=transports)
except socketio.exceptions.ConnectionError as e:
    say("connection failed: " + str(e))
    sys.exit(2)
say("transport " + sio.transport())
sio.wait()
