#pragma once
// The parsed template: expressions and statements as plain tree nodes. Each node keeps its
// source line for error messages.
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "text/jinja/value.hpp"

namespace tandem::jinja {

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  enum class Kind {
    literal,      // value
    name,         // name
    list,         // items
    tuple,        // items
    dict,         // items: key, value, key, value, ...
    attribute,    // object.name
    subscript,    // object[index]
    slice,        // object[start:stop:step]; absent parts are null
    call,         // callee(items..., keyword...)
    filter,       // object | name(items..., keyword...)
    test,         // object is [not] name(items...)
    unary,        // op: "not", "-", "+"; operand in object
    binary,       // object op right; op: + - * / // % ** ~ and or
    compare,      // object (ops[k] comparands[k])...: == != < > <= >= in "not in"
    conditional,  // then_value if condition else else_value (else may be null)
  };
  Kind kind;
  int line = 0;
  Value value;
  std::string name;  // name, attribute, filter / test name, operator
  ExprPtr object, index, start, stop, step, right, condition, else_value;
  std::vector<ExprPtr> items;
  std::vector<std::pair<std::string, ExprPtr>> keyword;
  std::vector<std::string> ops;
  bool negated = false;  // `is not`

  Expr(Kind k, int l) : kind(k), line(l) {}
};

struct Stmt;
using Body = std::vector<std::unique_ptr<Stmt>>;

struct MacroParam {
  std::string name;
  ExprPtr default_value;  // null: required
};

struct Stmt {
  enum class Kind {
    text,    // text
    output,  // {{ expr }}
    if_,     // branches (condition, body); else_body
    for_,    // for targets in expr [if condition]: body [else: else_body]
    set,     // set targets = expr | set namespace.attribute = expr | block set (body, filters)
    macro,   // macro name(params): body
    break_,
    continue_,
    filter,  // {% filter f %}body{% endfilter %}: expr is the filter chain over a null operand
    scope,   // body rendered as is ({% generation %}, {% with %} without bindings)
  };
  Kind kind;
  int line = 0;
  std::string text;
  ExprPtr expr, condition;
  std::vector<std::string> targets;  // for/set names; set: `ns.attr` keeps ns here, attr in attribute
  std::string attribute;
  std::vector<std::pair<ExprPtr, Body>> branches;
  Body body, else_body;
  std::vector<MacroParam> params;

  Stmt(Kind k, int l) : kind(k), line(l) {}
};

}  // namespace tandem::jinja
