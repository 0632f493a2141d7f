#pragma once
// An HTTP error in OpenAI's shape: {"error": {"message", "type", "param", "code"}} with a status.
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>

namespace tandem::server {

class ApiError : public std::runtime_error {
 public:
  ApiError(int status, std::string message, std::string type = "invalid_request_error",
           std::string param = {}, std::string code = {})
      : std::runtime_error(std::move(message)),
        status_(status),
        type_(std::move(type)),
        param_(std::move(param)),
        code_(std::move(code)) {}
  int status() const { return status_; }
  nlohmann::json body() const;

 private:
  int status_;
  std::string type_, param_, code_;
};

// Builds the body for any status (404 for an unknown path, 413 for a body too large, ...).
nlohmann::json error_body(int status, const std::string& message, const std::string& type = {},
                          const std::string& param = {}, const std::string& code = {});

}  // namespace tandem::server
