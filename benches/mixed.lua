-- wrk script: a mixed load, nine reads (GET /api/config/recipients) to one
-- write (PUT /api/config/system/email_enabled)
wrk.headers["Content-Type"] = "application/json"
local n = 0
local read, write

function init(args)
   read = wrk.format("GET", "/api/config/recipients")
   write = wrk.format("PUT", "/api/config/system/email_enabled", nil, '{"value":"true"}')
end

function request()
   n = n + 1
   if n % 10 == 0 then
      return write
   end
   return read
end
