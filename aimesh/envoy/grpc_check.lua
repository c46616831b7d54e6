-- The edge's check of a call before it reaches a service (aimesh/envoy/filters.py: the Lua
-- filter, with this file's functions as its named sources). Each route names the check it gets:
-- "client_stream" where the client sends a stream (the request's headers only), "one_message"
-- for the rest, unary and server-streaming calls (headers, and the body, already read whole by
-- the buffer filter). What fails is refused here as
-- INVALID_ARGUMENT naming `request`, where a service's gRPC library would have answered INTERNAL
-- (a compressed flag with no encoding), waited for the rest of a message until the deadline (a
-- frame cut short, no body), or reset the call (a body that is not gRPC at all).

local function refuse(handle, why)
  handle:respond({[":status"] = "200", ["content-type"] = "application/grpc",
                  ["grpc-status"] = "3", ["grpc-message"] = "request: " .. why}, "")
end

local function grpc_content_type(handle)
  local content_type = handle:headers():get("content-type") or ""
  if string.sub(content_type, 1, 16) ~= "application/grpc" then
    refuse(handle, "not a gRPC call (content-type " .. content_type .. ")")
    return false
  end
  return true
end

function check_client_stream(handle)
  grpc_content_type(handle)
end

-- One message, framed: a flag byte (0, or 1 with grpc-encoding), four bytes of length, the
-- message, and nothing after it.
function check_one_message(handle)
  if not grpc_content_type(handle) then
    return
  end
  local body = handle:body()
  local size = body and body:length() or 0
  if size < 5 then
    refuse(handle, "no complete gRPC message")
    return
  end
  local flag = string.byte(body:getBytes(0, 1))
  local a, b, c, d = string.byte(body:getBytes(1, 4), 1, 4)
  local length = ((a * 256 + b) * 256 + c) * 256 + d
  if flag > 1 or (flag == 1 and handle:headers():get("grpc-encoding") == nil) then
    refuse(handle, "a message flagged compressed (or unknown flags) with no grpc-encoding")
  elseif length ~= size - 5 then
    refuse(handle, "not exactly one gRPC message (a frame of " .. length .. " bytes in a body of "
           .. (size - 5) .. ")")
  end
end
