-- wrk script: POST the JSON body in the file named by $BENCH_BODY to the URL's path.
local path = os.getenv("BENCH_BODY")
if not path then
  error("BENCH_BODY is not set (the request body file)")
end
local f = assert(io.open(path, "rb"))
local body = f:read("*a")
f:close()

wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-bench"
