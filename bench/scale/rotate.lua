-- wrk script: POST the JSON bodies whose paths are listed (one per line) in the file named by $BENCH_BODIES,
-- one after the other, to the URL's path. Each wrk thread starts at a different body.
local list = os.getenv("BENCH_BODIES")
if not list then
  error("BENCH_BODIES is not set (a file listing request body files, one per line)")
end

local reqs = {}
local i = 0
local threads = 0

function setup(thread)
  thread:set("thread_index", threads)
  threads = threads + 1
end

function init(args)
  local headers = { ["Content-Type"] = "application/json", ["Authorization"] = "Bearer sk-bench" }
  for path in io.lines(list) do
    if path ~= "" then
      local f = assert(io.open(path, "rb"))
      local body = f:read("*a")
      f:close()
      reqs[#reqs + 1] = wrk.format("POST", nil, headers, body)
    end
  end
  if #reqs == 0 then
    error("no request bodies listed in " .. list)
  end
  i = (thread_index or 0) * 7 % #reqs
end

function request()
  i = i % #reqs + 1
  return reqs[i]
end
