-- wrk script: etcd's JSON gateway, POST /v3/kv/range of the key "bench-key"
-- (keys and values are base64 in etcd's JSON: "YmVuY2gta2V5" is "bench-key").
wrk.method = "POST"
wrk.body = '{"key":"YmVuY2gta2V5"}'
wrk.headers["Content-Type"] = "application/json"
