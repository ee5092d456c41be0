
counter = 0
request = function()
  counter = counter + 1
  local body = '{"pool":"p","session":"s-' .. tostring(math.random(1,1000000000)) .. '-' .. counter .. '"}'
  return wrk.format("POST", "/v1/leases", {["Authorization"]="Bearer bench-site-key", ["Content-Type"]="application/json"}, body)
end
