
request = function()
  local n = 33800000000 + math.random(0, 9999)
  return wrk.format("GET", "/v1/attribution?called=%2B" .. n, {["Authorization"]="Bearer bench-telephony-key"})
end
