-- wrk script: a write call, PUT /api/config/system/email_enabled
wrk.method = "PUT"
wrk.body = '{"value":"true"}'
wrk.headers["Content-Type"] = "application/json"
