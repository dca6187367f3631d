-- wrk script: etcd's JSON gateway, POST /v3/kv/put of "bench-key" with the same
-- 100-byte value as put.lua (100 "v"s: "dnZ2" is base64 of "vvv", "dg==" of "v").
wrk.method = "POST"
wrk.body = '{"key":"YmVuY2gta2V5","value":"' .. string.rep("dnZ2", 33) .. 'dg=="}'
wrk.headers["Content-Type"] = "application/json"
