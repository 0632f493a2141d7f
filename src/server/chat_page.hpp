#pragma once
// The chat page served at GET /: one static HTML file (no external assets) that streams replies
// from /v1/chat/completions and can stop a generation.
#include <string_view>

namespace tandem::server {
std::string_view chat_page_html();
}
