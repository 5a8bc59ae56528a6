-- wrk script for scripts/bench-load.sh.
--
-- Counts the response status codes, so that the benchmark can show it
-- measured the path it meant to (200s for a success, 429s for a ban...),
-- and prints one machine-readable line at the end:
--   BENCH requests=<n> duration_us=<n> p50_us=<n> p99_us=<n> errors=<n> statuses=200:<n>,401:<n>
--
-- With BENCH_LINES set to a file, each request carries the next line of
-- that file as the value of header BENCH_HEADER (default Authorization),
-- cycling, so that a flood of distinct credentials can be replayed from a
-- precomputed list. Without it, the request is wrk's own static one (-H
-- headers), which wrk builds once: no Lua runs per request then but the
-- response counter.

local threads = {}

function setup(thread)
	table.insert(threads, thread)
end

local lines_path = os.getenv("BENCH_LINES") or ""
local header = os.getenv("BENCH_HEADER") or ""
if header == "" then
	header = "Authorization"
end

function init(args)
	statuses = {}
	if lines_path ~= "" then
		lines = {}
		for line in io.lines(lines_path) do
			lines[#lines + 1] = line
		end
		if #lines == 0 then
			error("no lines in " .. lines_path)
		end
		-- Start somewhere else in each thread and run, so that rounds do
		-- not replay the same credentials in the same order.
		math.randomseed(os.time() + tonumber(tostring({}):match("0x(%x+)"), 16))
		next_line = math.random(#lines)
	end
end

-- Only defined when there is a list: a script with a request function
-- makes wrk build every request in Lua.
if lines_path ~= "" then
	function request()
		next_line = next_line % #lines + 1
		wrk.headers[header] = lines[next_line]
		return wrk.format()
	end
end

function response(status, headers, body)
	statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
	local counts = {}
	for _, thread in ipairs(threads) do
		for status, n in pairs(thread:get("statuses")) do
			counts[status] = (counts[status] or 0) + n
		end
	end
	local codes = {}
	for status in pairs(counts) do
		codes[#codes + 1] = status
	end
	table.sort(codes)
	local parts = {}
	for _, status in ipairs(codes) do
		parts[#parts + 1] = status .. ":" .. counts[status]
	end
	local e = summary.errors
	io.write(string.format(
		"BENCH requests=%d duration_us=%d p50_us=%d p99_us=%d errors=%d statuses=%s\n",
		summary.requests, summary.duration,
		latency:percentile(50), latency:percentile(99),
		e.connect + e.read + e.write + e.timeout,
		table.concat(parts, ",")))
end
