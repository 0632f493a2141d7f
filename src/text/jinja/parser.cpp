#include "text/jinja/parser.hpp"

#include <fmt/core.h>

#include <algorithm>
#include <initializer_list>

#include "tandem/error.hpp"
#include "text/jinja/builtins.hpp"

namespace tandem::jinja {

namespace {

constexpr int max_nesting = 256;  // keeps hostile templates from exhausting the stack

std::string describe(const Token& token) {
  switch (token.kind) {
    case TokenKind::text:
      return "template text";
    case TokenKind::var_begin:
      return "'{{'";
    case TokenKind::var_end:
      return "'}}'";
    case TokenKind::block_begin:
      return "'{%'";
    case TokenKind::block_end:
      return "'%}'";
    case TokenKind::string:
      return "string literal";
    case TokenKind::integer:
    case TokenKind::floating:
      return "number " + token.text;
    case TokenKind::end_of_input:
      return "end of template";
    default:
      return "'" + token.text + "'";
  }
}

class Parser {
 public:
  explicit Parser(std::vector<Token> tokens) : tokens_(std::move(tokens)) {}

  Body parse_all() {
    std::string end_tag;
    Body body = parse_body({}, end_tag, "", 0);
    return body;
  }

 private:
  const Token& current() const { return tokens_[pos_]; }
  const Token& peek(size_t ahead = 1) const { return tokens_[std::min(pos_ + ahead, tokens_.size() - 1)]; }
  void advance() {
    if (pos_ + 1 < tokens_.size()) ++pos_;
  }
  bool is_op(const char* op) const { return current().kind == TokenKind::op && current().text == op; }
  bool is_name(const char* name) const { return current().kind == TokenKind::name && current().text == name; }
  bool accept_op(const char* op) {
    if (!is_op(op)) return false;
    advance();
    return true;
  }
  bool accept_name(const char* name) {
    if (!is_name(name)) return false;
    advance();
    return true;
  }

  [[noreturn]] void fail(const std::string& message, int line = -1) const {
    throw Error(ErrorKind::corrupt_file,
                fmt::format("chat template line {}: {}", line < 0 ? current().line : line, message));
  }
  void expect_op(const char* op) {
    if (!accept_op(op)) fail(fmt::format("expected '{}', got {}", op, describe(current())));
  }
  void expect_block_end(const char* tag) {
    if (current().kind != TokenKind::block_end)
      fail(fmt::format("expected '%}}' to end '{}', got {}", tag, describe(current())));
    advance();
  }
  std::string expect_name(const char* what) {
    if (current().kind != TokenKind::name)
      fail(fmt::format("expected {}, got {}", what, describe(current())));
    std::string name = current().text;
    advance();
    return name;
  }

  struct DepthGuard {
    explicit DepthGuard(Parser& p) : parser(p) {
      if (++parser.depth_ > max_nesting)
        parser.fail(fmt::format("nesting deeper than {} levels", max_nesting));
    }
    ~DepthGuard() { --parser.depth_; }
    Parser& parser;
  };

  // Statements until one of `end_tags` (the `{%` and the tag name consumed, `end_tag` set) or
  // the end of input (an error when end tags were expected: an unclosed block).
  Body parse_body(std::initializer_list<const char*> end_tags, std::string& end_tag, const char* opened,
                  int opened_line) {
    DepthGuard guard(*this);
    OpenBlock block{opened, opened_line, end_tags.size() ? *(end_tags.end() - 1) : ""};
    std::swap(block, open_block_);
    struct Restore {
      OpenBlock& slot;
      OpenBlock saved;
      ~Restore() { slot = saved; }
    } restore{open_block_, block};
    Body body;
    while (true) {
      const Token& token = current();
      switch (token.kind) {
        case TokenKind::text: {
          auto stmt = std::make_unique<Stmt>(Stmt::Kind::text, token.line);
          stmt->text = token.text;
          body.push_back(std::move(stmt));
          advance();
          break;
        }
        case TokenKind::var_begin: {
          auto stmt = std::make_unique<Stmt>(Stmt::Kind::output, token.line);
          advance();
          stmt->expr = parse_tuple_or_expression();
          if (current().kind != TokenKind::var_end)
            fail(fmt::format("expected '}}}}', got {}", describe(current())));
          advance();
          body.push_back(std::move(stmt));
          break;
        }
        case TokenKind::block_begin: {
          advance();
          if (current().kind != TokenKind::name)
            fail(fmt::format("expected a tag name after '{{%', got {}", describe(current())));
          const std::string& name = current().text;
          for (const char* end : end_tags)
            if (name == end) {
              end_tag = name;
              advance();
              return body;
            }
          body.push_back(parse_statement());
          break;
        }
        case TokenKind::end_of_input:
          if (end_tags.size() != 0)
            fail(fmt::format("unclosed block '{}' opened on line {} (expected '{}')", opened, opened_line,
                             *(end_tags.end() - 1)));
          return body;
        default:
          fail(fmt::format("unexpected {}", describe(token)));
      }
    }
  }

  std::unique_ptr<Stmt> parse_statement() {
    const Token& tag = current();
    int line = tag.line;
    std::string name = tag.text;
    advance();
    if (name == "if") return parse_if(line);
    if (name == "for") return parse_for(line);
    if (name == "set") return parse_set(line);
    if (name == "macro") return parse_macro(line);
    if (name == "filter") return parse_filter_block(line);
    if (name == "break" || name == "continue") {
      expect_block_end(name.c_str());
      return std::make_unique<Stmt>(name == "break" ? Stmt::Kind::break_ : Stmt::Kind::continue_, line);
    }
    if (name == "generation") {  // transformers' AssistantTracker: renders its body unchanged
      expect_block_end("generation");
      auto stmt = std::make_unique<Stmt>(Stmt::Kind::scope, line);
      std::string end;
      stmt->body = parse_body({"endgeneration"}, end, "generation", line);
      expect_block_end("endgeneration");
      return stmt;
    }
    static const char* const known_ends[] = {"endif", "endfor", "endset",        "endmacro", "endfilter",
                                             "else",  "elif",   "endgeneration", "endraw"};
    for (const char* end : known_ends)
      if (name == end) {
        if (open_block_.expected[0] == '\0')
          fail(fmt::format("unexpected tag '{}' (no block open that it closes)", name), line);
        fail(fmt::format("unexpected tag '{}' inside '{}' opened on line {} (expected '{}')", name,
                         open_block_.name, open_block_.line, open_block_.expected),
             line);
      }
    throw Error(ErrorKind::unsupported,
                fmt::format("chat template line {}: unknown or unsupported tag '{}'", line, name));
  }

  std::unique_ptr<Stmt> parse_if(int line) {
    auto stmt = std::make_unique<Stmt>(Stmt::Kind::if_, line);
    ExprPtr condition = parse_expression();
    expect_block_end("if");
    while (true) {
      std::string end;
      Body body = parse_body({"elif", "else", "endif"}, end, "if", line);
      stmt->branches.emplace_back(std::move(condition), std::move(body));
      if (end == "elif") {
        condition = parse_expression();
        expect_block_end("elif");
        continue;
      }
      if (end == "else") {
        expect_block_end("else");
        stmt->else_body = parse_body({"endif"}, end, "if", line);
      }
      expect_block_end("endif");
      return stmt;
    }
  }

  std::vector<std::string> parse_targets(const char* tag) {
    std::vector<std::string> targets;
    bool parenthesized = accept_op("(");
    do {
      targets.push_back(expect_name(fmt::format("a variable name in '{}'", tag).c_str()));
    } while (accept_op(",") && current().kind == TokenKind::name);
    if (parenthesized) expect_op(")");
    return targets;
  }

  std::unique_ptr<Stmt> parse_for(int line) {
    auto stmt = std::make_unique<Stmt>(Stmt::Kind::for_, line);
    stmt->targets = parse_targets("for");
    if (!accept_name("in")) fail(fmt::format("expected 'in' in 'for', got {}", describe(current())));
    stmt->expr = parse_tuple_or_expression(/*with_conditional=*/false);
    if (accept_name("if")) stmt->condition = parse_expression();
    if (is_name("recursive"))
      throw Error(ErrorKind::unsupported,
                  fmt::format("chat template line {}: unsupported 'for ... recursive'", line));
    expect_block_end("for");
    std::string end;
    stmt->body = parse_body({"else", "endfor"}, end, "for", line);
    if (end == "else") {
      expect_block_end("else");
      stmt->else_body = parse_body({"endfor"}, end, "for", line);
    }
    expect_block_end("endfor");
    return stmt;
  }

  std::unique_ptr<Stmt> parse_set(int line) {
    auto stmt = std::make_unique<Stmt>(Stmt::Kind::set, line);
    if (current().kind == TokenKind::name && peek().kind == TokenKind::op && peek().text == ".") {
      stmt->targets.push_back(current().text);
      advance();
      advance();
      stmt->attribute = expect_name("an attribute name in 'set'");
    } else {
      stmt->targets = parse_targets("set");
    }
    if (accept_op("=")) {
      stmt->expr = parse_tuple_or_expression();
      expect_block_end("set");
      return stmt;
    }
    if (!stmt->attribute.empty() || stmt->targets.size() != 1) fail("expected '=' in 'set'");
    if (is_op("|")) stmt->condition = parse_filter_chain(nullptr);  // filters over the block
    expect_block_end("set");
    std::string end;
    stmt->body = parse_body({"endset"}, end, "set", line);
    expect_block_end("endset");
    return stmt;
  }

  std::unique_ptr<Stmt> parse_macro(int line) {
    auto stmt = std::make_unique<Stmt>(Stmt::Kind::macro, line);
    stmt->targets.push_back(expect_name("a macro name"));
    expect_op("(");
    while (!accept_op(")")) {
      MacroParam param;
      param.name = expect_name("a macro parameter name");
      if (accept_op("=")) param.default_value = parse_expression();
      stmt->params.push_back(std::move(param));
      if (!is_op(")")) expect_op(",");
    }
    expect_block_end("macro");
    std::string end;
    stmt->body = parse_body({"endmacro"}, end, "macro", line);
    if (current().kind == TokenKind::name && current().text == stmt->targets[0]) advance();
    expect_block_end("endmacro");
    return stmt;
  }

  std::unique_ptr<Stmt> parse_filter_block(int line) {
    auto stmt = std::make_unique<Stmt>(Stmt::Kind::filter, line);
    stmt->expr = parse_filter_chain(nullptr, /*leading_bar=*/false);
    expect_block_end("filter");
    std::string end;
    stmt->body = parse_body({"endfilter"}, end, "filter", line);
    expect_block_end("endfilter");
    return stmt;
  }

  // ---- expressions -------------------------------------------------------------------------

  ExprPtr make(Expr::Kind kind, int line) { return std::make_unique<Expr>(kind, line); }

  ExprPtr parse_tuple_or_expression(bool with_conditional = true) {
    int line = current().line;
    ExprPtr first = with_conditional ? parse_expression() : parse_or();
    if (!is_op(",")) return first;
    auto tuple = make(Expr::Kind::tuple, line);
    tuple->items.push_back(std::move(first));
    while (accept_op(",")) {
      if (current().kind == TokenKind::block_end || current().kind == TokenKind::var_end) break;
      tuple->items.push_back(with_conditional ? parse_expression() : parse_or());
    }
    return tuple;
  }

  ExprPtr parse_expression() {
    DepthGuard guard(*this);
    ExprPtr expr = parse_or();
    while (is_name("if")) {
      int line = current().line;
      advance();
      auto conditional = make(Expr::Kind::conditional, line);
      conditional->object = std::move(expr);
      conditional->condition = parse_or();
      if (accept_name("else")) conditional->else_value = parse_expression();
      expr = std::move(conditional);
    }
    return expr;
  }

  ExprPtr binary(std::string op, ExprPtr left, ExprPtr right, int line) {
    auto node = make(Expr::Kind::binary, line);
    node->name = std::move(op);
    node->object = std::move(left);
    node->right = std::move(right);
    return node;
  }

  ExprPtr parse_or() {
    ExprPtr left = parse_and();
    while (is_name("or")) {
      int line = current().line;
      advance();
      left = binary("or", std::move(left), parse_and(), line);
    }
    return left;
  }

  ExprPtr parse_and() {
    ExprPtr left = parse_not();
    while (is_name("and")) {
      int line = current().line;
      advance();
      left = binary("and", std::move(left), parse_not(), line);
    }
    return left;
  }

  ExprPtr parse_not() {
    if (is_name("not")) {
      DepthGuard guard(*this);
      auto node = make(Expr::Kind::unary, current().line);
      advance();
      node->name = "not";
      node->object = parse_not();
      return node;
    }
    return parse_compare();
  }

  ExprPtr parse_compare() {
    int line = current().line;
    ExprPtr left = parse_math1();
    ExprPtr node;
    while (true) {
      std::string op;
      if (current().kind == TokenKind::op &&
          (is_op("==") || is_op("!=") || is_op("<") || is_op(">") || is_op("<=") || is_op(">="))) {
        op = current().text;
        advance();
      } else if (is_name("in")) {
        op = "in";
        advance();
      } else if (is_name("not") && peek().kind == TokenKind::name && peek().text == "in") {
        op = "not in";
        advance();
        advance();
      } else {
        break;
      }
      if (!node) {
        node = make(Expr::Kind::compare, line);
        node->object = std::move(left);
      }
      node->ops.push_back(op);
      node->items.push_back(parse_math1());
    }
    return node ? std::move(node) : std::move(left);
  }

  ExprPtr parse_math1() {
    ExprPtr left = parse_concat();
    while (is_op("+") || is_op("-")) {
      std::string op = current().text;
      int line = current().line;
      advance();
      left = binary(op, std::move(left), parse_concat(), line);
    }
    return left;
  }

  ExprPtr parse_concat() {
    ExprPtr left = parse_math2();
    while (is_op("~")) {
      int line = current().line;
      advance();
      left = binary("~", std::move(left), parse_math2(), line);
    }
    return left;
  }

  ExprPtr parse_math2() {
    ExprPtr left = parse_pow();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      std::string op = current().text;
      int line = current().line;
      advance();
      left = binary(op, std::move(left), parse_pow(), line);
    }
    return left;
  }

  ExprPtr parse_pow() {
    ExprPtr left = parse_unary(true);
    while (is_op("**")) {
      int line = current().line;
      advance();
      left = binary("**", std::move(left), parse_unary(true), line);
    }
    return left;
  }

  ExprPtr parse_unary(bool with_filter) {
    DepthGuard guard(*this);
    ExprPtr node;
    if (is_op("-") || is_op("+")) {
      node = make(Expr::Kind::unary, current().line);
      node->name = current().text;
      advance();
      node->object = parse_unary(false);
    } else {
      node = parse_primary();
    }
    node = parse_postfix(std::move(node));
    if (with_filter) node = parse_filters_and_tests(std::move(node));
    return node;
  }

  ExprPtr parse_primary() {
    const Token& token = current();
    int line = token.line;
    switch (token.kind) {
      case TokenKind::name: {
        auto node = make(Expr::Kind::literal, line);
        const std::string& name = token.text;
        if (name == "true" || name == "True")
          node->value = Value(true);
        else if (name == "false" || name == "False")
          node->value = Value(false);
        else if (name == "none" || name == "None")
          node->value = Value(None{});
        else {
          node->kind = Expr::Kind::name;
          node->name = name;
        }
        advance();
        return node;
      }
      case TokenKind::string: {
        auto node = make(Expr::Kind::literal, line);
        std::string text;
        while (current().kind == TokenKind::string) {  // adjacent literals concatenate
          text += current().text;
          advance();
        }
        node->value = Value(std::move(text));
        return node;
      }
      case TokenKind::integer:
      case TokenKind::floating: {
        auto node = make(Expr::Kind::literal, line);
        node->value = token.kind == TokenKind::integer ? Value(token.integer) : Value(token.floating);
        advance();
        return node;
      }
      case TokenKind::op:
        if (token.text == "(") {
          advance();
          if (accept_op(")")) return make(Expr::Kind::tuple, line);
          ExprPtr inner = parse_expression();
          if (is_op(",")) {
            auto tuple = make(Expr::Kind::tuple, line);
            tuple->items.push_back(std::move(inner));
            while (accept_op(",") && !is_op(")")) tuple->items.push_back(parse_expression());
            inner = std::move(tuple);
          }
          expect_op(")");
          return inner;
        }
        if (token.text == "[") {
          advance();
          auto list = make(Expr::Kind::list, line);
          while (!accept_op("]")) {
            list->items.push_back(parse_expression());
            if (!is_op("]")) expect_op(",");
          }
          return list;
        }
        if (token.text == "{") {
          advance();
          auto dict = make(Expr::Kind::dict, line);
          while (!accept_op("}")) {
            dict->items.push_back(parse_expression());
            expect_op(":");
            dict->items.push_back(parse_expression());
            if (!is_op("}")) expect_op(",");
          }
          return dict;
        }
        break;
      default:
        break;
    }
    fail(fmt::format("unexpected {} in expression", describe(token)));
  }

  ExprPtr parse_postfix(ExprPtr node) {
    while (true) {
      int line = current().line;
      if (accept_op(".")) {
        auto attribute = make(Expr::Kind::attribute, line);
        attribute->object = std::move(node);
        if (current().kind == TokenKind::integer) {  // `x.0` is jinja's x[0]
          attribute->kind = Expr::Kind::subscript;
          attribute->index = make(Expr::Kind::literal, line);
          attribute->index->value = Value(current().integer);
          advance();
        } else {
          attribute->name = expect_name("an attribute name after '.'");
        }
        node = std::move(attribute);
      } else if (is_op("[")) {
        advance();
        node = parse_subscript(std::move(node), line);
      } else if (is_op("(")) {
        node = parse_call(std::move(node));
      } else {
        return node;
      }
    }
  }

  ExprPtr parse_subscript(ExprPtr object, int line) {
    ExprPtr start;
    if (!is_op(":")) {
      start = parse_expression();
      if (accept_op("]")) {
        auto node = make(Expr::Kind::subscript, line);
        node->object = std::move(object);
        node->index = std::move(start);
        return node;
      }
    }
    auto node = make(Expr::Kind::slice, line);
    node->object = std::move(object);
    node->start = std::move(start);
    expect_op(":");
    if (!is_op(":") && !is_op("]")) node->stop = parse_expression();
    if (accept_op(":") && !is_op("]")) node->step = parse_expression();
    expect_op("]");
    return node;
  }

  // Fills items/keyword of `node` from `( args )`.
  void parse_arguments(Expr& node) {
    expect_op("(");
    while (!accept_op(")")) {
      if (current().kind == TokenKind::name && peek().kind == TokenKind::op && peek().text == "=") {
        std::string key = current().text;
        advance();
        advance();
        node.keyword.emplace_back(std::move(key), parse_expression());
      } else {
        if (is_op("*") || is_op("**")) fail("unsupported '*args' / '**kwargs' in a call");
        if (!node.keyword.empty()) fail("positional argument after keyword argument");
        node.items.push_back(parse_expression());
      }
      if (!is_op(")")) expect_op(",");
    }
  }

  ExprPtr parse_call(ExprPtr callee) {
    auto call = make(Expr::Kind::call, current().line);
    call->object = std::move(callee);
    parse_arguments(*call);
    return call;
  }

  ExprPtr parse_filter_chain(ExprPtr node, bool leading_bar = true) {
    bool first = true;
    while ((first && !leading_bar) || accept_op("|")) {
      first = false;
      auto filter = make(Expr::Kind::filter, current().line);
      filter->name = expect_name("a filter name");
      while (is_op(".")) {  // dotted filter names
        advance();
        filter->name += "." + expect_name("a filter name");
      }
      if (!is_known_filter(filter->name))
        throw Error(ErrorKind::unsupported,
                    fmt::format("chat template line {}: unknown filter '{}'", filter->line, filter->name));
      filter->object = std::move(node);
      if (is_op("(")) parse_arguments(*filter);
      node = std::move(filter);
    }
    return node;
  }

  ExprPtr parse_filters_and_tests(ExprPtr node) {
    while (true) {
      if (is_op("|")) {
        node = parse_filter_chain(std::move(node));
      } else if (is_name("is")) {
        auto test = make(Expr::Kind::test, current().line);
        advance();
        test->negated = accept_name("not");
        // `is none` / `is true`: those names are literal keywords elsewhere, test names here
        test->name = expect_name("a test name after 'is'");
        if (!is_known_test(test->name))
          throw Error(ErrorKind::unsupported,
                      fmt::format("chat template line {}: unknown test '{}'", test->line, test->name));
        test->object = std::move(node);
        if (is_op("(")) {
          parse_arguments(*test);
        } else if ((current().kind == TokenKind::name || current().kind == TokenKind::string ||
                    current().kind == TokenKind::integer || current().kind == TokenKind::floating ||
                    is_op("[") || is_op("{")) &&
                   !is_name("else") && !is_name("or") && !is_name("and")) {
          if (is_name("is")) fail("'is' cannot follow a test");
          test->items.push_back(parse_postfix(parse_primary()));
        }
        node = std::move(test);
      } else if (is_op("(")) {
        node = parse_call(std::move(node));
      } else {
        return node;
      }
    }
  }

  struct OpenBlock {
    const char* name = "";
    int line = 0;
    const char* expected = "";
  };

  std::vector<Token> tokens_;
  size_t pos_ = 0;
  int depth_ = 0;
  OpenBlock open_block_;
};

}  // namespace

Body parse_template(std::vector<Token> tokens) { return Parser(std::move(tokens)).parse_all(); }

}  // namespace tandem::jinja
