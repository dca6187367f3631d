-- wrk script: PUT a 100-byte raw value (kvstore-server's PUT /v1/kv/KEY, and the
-- reference, which answers any method). The URL given to wrk names the key.
wrk.method = "PUT"
wrk.body = string.rep("v", 100)
wrk.headers["Content-Type"] = "application/octet-stream"
