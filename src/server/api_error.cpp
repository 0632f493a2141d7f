#include "tandem/server/api_error.hpp"

namespace tandem::server {

nlohmann::json error_body(int status, const std::string& message, const std::string& type,
                          const std::string& param, const std::string& code) {
  std::string t = type;
  if (t.empty()) {
    if (status == 401)
      t = "authentication_error";
    else if (status == 404)
      t = "not_found_error";
    else if (status == 429)
      t = "rate_limit_error";
    else if (status >= 500)
      t = "server_error";
    else
      t = "invalid_request_error";
  }
  nlohmann::json e = {{"message", message}, {"type", t}, {"param", nullptr}, {"code", nullptr}};
  if (!param.empty()) e["param"] = param;
  if (!code.empty()) e["code"] = code;
  return {{"error", e}};
}

nlohmann::json ApiError::body() const { return error_body(status_, what(), type_, param_, code_); }

}  // namespace tandem::server
