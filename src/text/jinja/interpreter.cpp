#include "text/jinja/interpreter.hpp"

#include <fmt/core.h>

#include <cmath>
#include <unordered_map>

#include "tandem/error.hpp"
#include "text/jinja/builtins.hpp"

namespace tandem::jinja {

namespace {

constexpr int max_call_depth = 128;

using Frame = std::unordered_map<std::string, Value>;

enum class Flow { normal, break_loop, continue_loop };

[[noreturn]] void undefined_error(const Value& value) {
  throw EvalError(fmt::format("'{}' is undefined", value.undefined_name()));
}

[[noreturn]] void operand_error(const std::string& op, const Value& a, const Value& b) {
  if (a.is_undefined()) undefined_error(a);
  if (b.is_undefined()) undefined_error(b);
  throw EvalError(
      fmt::format("unsupported operand type(s) for {}: '{}' and '{}'", op, a.type_name(), b.type_name()));
}

bool is_integral(const Value& v) { return v.is_int() || v.is_bool(); }
int64_t integral(const Value& v) { return v.is_bool() ? int64_t{v.as_bool()} : v.as_int(); }

Value repeat(const Value& sequence, int64_t times) {
  times = std::max<int64_t>(times, 0);
  if (sequence.is_string()) {
    const std::string& text = sequence.as_string();
    if (!text.empty() && static_cast<uint64_t>(times) > max_value_bytes / text.size())
      throw EvalError("string repetition result too large");
    std::string out;
    for (int64_t k = 0; k < times; ++k) out += text;
    return Value(std::move(out));
  }
  const List& list = sequence.as_list();
  if (!list.empty() && static_cast<uint64_t>(times) > max_range_items / list.size())
    throw EvalError("list repetition result too large");
  List out;
  for (int64_t k = 0; k < times; ++k) out.insert(out.end(), list.begin(), list.end());
  return Value(std::move(out));
}

Value arithmetic(const std::string& op, const Value& a, const Value& b) {
  if (op == "+") {
    if (a.is_string() && b.is_string()) {
      if (a.as_string().size() + b.as_string().size() > max_value_bytes) throw EvalError("string too large");
      return Value(a.as_string() + b.as_string());
    }
    if (a.is_list() && b.is_list()) {
      List out = a.as_list();
      out.insert(out.end(), b.as_list().begin(), b.as_list().end());
      return Value(std::move(out));
    }
  }
  if (op == "*") {
    if ((a.is_string() || a.is_list()) && is_integral(b)) return repeat(a, integral(b));
    if ((b.is_string() || b.is_list()) && is_integral(a)) return repeat(b, integral(a));
  }
  if (!a.is_number() || !b.is_number()) operand_error(op, a, b);
  if (is_integral(a) && is_integral(b) && op != "/") {
    int64_t x = integral(a), y = integral(b), r = 0;
    bool overflow = false;
    if (op == "+")
      overflow = __builtin_add_overflow(x, y, &r);
    else if (op == "-")
      overflow = __builtin_sub_overflow(x, y, &r);
    else if (op == "*")
      overflow = __builtin_mul_overflow(x, y, &r);
    else if (op == "//" || op == "%") {
      if (y == 0) throw EvalError("integer division or modulo by zero");
      if (x == INT64_MIN && y == -1) throw EvalError("integer overflow");
      int64_t q = x / y, m = x % y;
      if (m != 0 && ((m < 0) != (y < 0))) {
        --q;
        m += y;
      }
      r = op == "//" ? q : m;
    } else if (op == "**") {
      if (y < 0) return Value(std::pow(static_cast<double>(x), static_cast<double>(y)));
      r = 1;
      for (int64_t k = 0; k < y && !overflow; ++k) overflow = __builtin_mul_overflow(r, x, &r);
    }
    if (overflow) throw EvalError(fmt::format("integer overflow in {}", op));
    return Value(r);
  }
  double x = a.number(), y = b.number();
  if (op == "+") return Value(x + y);
  if (op == "-") return Value(x - y);
  if (op == "*") return Value(x * y);
  if (op == "**") return Value(std::pow(x, y));
  if (y == 0.0) throw EvalError("float division by zero");
  if (op == "/") return Value(x / y);
  double q = std::floor(x / y);
  if (op == "//") return Value(q);
  double m = std::fmod(x, y);
  if (m != 0.0 && ((m < 0) != (y < 0))) m += y;
  return Value(m);
}

class Interpreter {
 public:
  Interpreter(const Dict& context, std::string& out, const RenderLimits& limits)
      : context_(context), out_(out), limits_(limits) {
    frames_.push_back(&root_);
  }

  void run(const Body& body) { exec(body); }

 private:
  // ---- statements ----------------------------------------------------------------------------

  Flow exec(const Body& body) {
    for (const auto& stmt : body) {
      Flow flow = exec(*stmt);
      if (flow != Flow::normal) return flow;
    }
    return Flow::normal;
  }

  // One unit of work against the render budget; polls the cancellation flag now and then.
  void step() {
    if (++steps_ > limits_.max_steps)
      throw Error(ErrorKind::out_of_range,
                  fmt::format("chat template exceeds its budget of {} evaluation steps", limits_.max_steps));
    if (limits_.cancel && (steps_ & 4095) == 0 && limits_.cancel->load(std::memory_order_relaxed))
      throw Error(ErrorKind::cancelled, "chat template rendering cancelled");
  }

  // A value a call, filter or operator built charges the budget for its size — a list or dict one step
  // per item, a string one per 64 bytes — so a loop re-building range(1000000) (or a long string)
  // each pass is bounded by the work it does, not only by its iterations.
  Value charged(Value v) {
    uint64_t size = 0;
    if (v.is_list()) size = v.as_list().size();
    else if (v.is_dict()) size = v.as_dict().items.size();
    else if (v.is_string()) size = v.as_string().size() / 64;
    if (size > 0) {
      steps_ += size - 1;
      step();
    }
    return v;
  }

  void write(const std::string& text) {
    out_ += text;
    if (out_.size() > max_value_bytes)
      throw Error(ErrorKind::out_of_range,
                  fmt::format("chat template output exceeds {} bytes", max_value_bytes));
  }

  Flow exec(const Stmt& stmt) {
    step();
    try {
      return exec_statement(stmt);
    } catch (const EvalError& e) {
      throw Error(ErrorKind::invalid_argument, fmt::format("chat template line {}: {}", stmt.line, e.what()));
    }
  }

  Flow exec_statement(const Stmt& stmt) {
    switch (stmt.kind) {
      case Stmt::Kind::text:
        write(stmt.text);
        return Flow::normal;
      case Stmt::Kind::output:
        write(to_str(eval(*stmt.expr)));
        return Flow::normal;
      case Stmt::Kind::if_:
        for (const auto& [condition, body] : stmt.branches)
          if (eval(*condition).truthy()) return exec(body);
        return exec(stmt.else_body);
      case Stmt::Kind::for_:
        exec_for(stmt);
        return Flow::normal;
      case Stmt::Kind::set:
        exec_set(stmt);
        return Flow::normal;
      case Stmt::Kind::macro:
        define_macro(stmt);
        return Flow::normal;
      case Stmt::Kind::break_:
        return Flow::break_loop;
      case Stmt::Kind::continue_:
        return Flow::continue_loop;
      case Stmt::Kind::filter:
        write(to_str(apply_filter_chain(*stmt.expr, Value(capture(stmt.body)))));
        return Flow::normal;
      case Stmt::Kind::scope:
        return exec(stmt.body);
    }
    return Flow::normal;
  }

  std::string capture(const Body& body) {
    std::string saved;
    std::swap(saved, out_);
    try {
      exec(body);
    } catch (...) {
      std::swap(saved, out_);
      throw;
    }
    std::swap(saved, out_);
    return saved;
  }

  void assign(Frame& frame, const std::vector<std::string>& targets, const Value& value) {
    if (targets.size() == 1) {
      frame[targets[0]] = value;
      return;
    }
    List items = iterate(value);
    if (items.size() != targets.size())
      throw EvalError(fmt::format("cannot unpack {} values into {} names", items.size(), targets.size()));
    for (size_t k = 0; k < targets.size(); ++k) frame[targets[k]] = items[k];
  }

  void exec_set(const Stmt& stmt) {
    if (!stmt.attribute.empty()) {
      Value target = lookup(stmt.targets[0]);
      if (!target.is_namespace())
        throw EvalError(fmt::format("cannot assign attribute '{}' on '{}' (not a namespace)", stmt.attribute,
                                    stmt.targets[0]));
      target.as_namespace().attributes.set(stmt.attribute, eval(*stmt.expr));
      return;
    }
    Value value;
    if (stmt.expr) {
      value = eval(*stmt.expr);
    } else {
      value = Value(capture(stmt.body));
      if (stmt.condition) value = apply_filter_chain(*stmt.condition, value);
    }
    assign(*frames_.back(), stmt.targets, value);
  }

  void exec_for(const Stmt& stmt) {
    Value iterable = eval(*stmt.expr);
    if (iterable.is_none()) throw EvalError("'NoneType' object is not iterable");
    List items = iterate(iterable);
    if (stmt.condition) {  // `for x in xs if cond`: filtered before loop.* is computed
      List kept;
      for (const auto& item : items) {
        step();
        Frame frame;
        assign(frame, stmt.targets, item);
        frames_.push_back(&frame);
        bool keep = eval(*stmt.condition).truthy();
        frames_.pop_back();
        if (keep) kept.push_back(item);
      }
      items = std::move(kept);
    }
    if (items.empty()) {
      exec(stmt.else_body);
      return;
    }
    auto length = static_cast<int64_t>(items.size());
    for (int64_t k = 0; k < length; ++k) {
      step();
      Frame frame;
      assign(frame, stmt.targets, items[k]);
      frame["loop"] = loop_object(items, k);
      frames_.push_back(&frame);
      Flow flow;
      try {
        flow = exec(stmt.body);
      } catch (...) {
        frames_.pop_back();
        throw;
      }
      frames_.pop_back();
      if (flow == Flow::break_loop) break;
    }
  }

  static Value loop_object(const List& items, int64_t k) {
    auto length = static_cast<int64_t>(items.size());
    Dict loop;
    loop.set("index0", Value(k));
    loop.set("index", Value(k + 1));
    loop.set("revindex0", Value(length - k - 1));
    loop.set("revindex", Value(length - k));
    loop.set("first", Value(k == 0));
    loop.set("last", Value(k == length - 1));
    loop.set("length", Value(length));
    loop.set("depth", Value(1));
    loop.set("depth0", Value(0));
    loop.set("previtem", k > 0 ? items[k - 1] : Value::undefined("previtem"));
    loop.set("nextitem", k + 1 < length ? items[k + 1] : Value::undefined("nextitem"));
    loop.set("cycle",
             Value(Callable{"cycle", [k](const CallArgs& args) {
                              if (args.positional.empty())
                                throw EvalError("loop.cycle() needs at least one value");
                              return args.positional[static_cast<size_t>(k) % args.positional.size()];
                            }}));
    return Value(std::move(loop));
  }

  void define_macro(const Stmt& stmt) {
    const Stmt* macro = &stmt;
    Interpreter* self = this;
    (*frames_.back())[stmt.targets[0]] = Value(Callable{stmt.targets[0], [self, macro](const CallArgs& args) {
                                                          return Value(self->call_macro(*macro, args));
                                                        }});
  }

  std::string call_macro(const Stmt& macro, const CallArgs& args) {
    if (call_depth_ >= max_call_depth)
      throw EvalError(fmt::format("macro recursion deeper than {}", max_call_depth));
    if (args.positional.size() > macro.params.size())
      throw EvalError(fmt::format("macro '{}' takes {} arguments, {} given", macro.targets[0],
                                  macro.params.size(), args.positional.size()));
    Frame frame;
    for (size_t k = 0; k < macro.params.size(); ++k) {
      const MacroParam& param = macro.params[k];
      if (k < args.positional.size()) frame[param.name] = args.positional[k];
    }
    for (const auto& [key, value] : args.keyword) {
      bool known = false;
      for (const auto& param : macro.params) known = known || param.name == key;
      if (!known) throw EvalError(fmt::format("macro '{}' has no argument '{}'", macro.targets[0], key));
      frame[key] = value;
    }
    std::vector<Frame*> saved = {&root_, &frame};
    std::swap(saved, frames_);
    ++call_depth_;
    std::string result;
    try {
      for (const auto& param : macro.params)
        if (!frame.count(param.name))
          frame[param.name] = param.default_value ? eval(*param.default_value) : Value::undefined(param.name);
      result = capture(macro.body);
    } catch (...) {
      --call_depth_;
      std::swap(saved, frames_);
      throw;
    }
    --call_depth_;
    std::swap(saved, frames_);
    return result;
  }

  // ---- expressions ---------------------------------------------------------------------------

  Value lookup(const std::string& name) const {
    for (auto frame = frames_.rbegin(); frame != frames_.rend(); ++frame) {
      auto found = (*frame)->find(name);
      if (found != (*frame)->end()) return found->second;
    }
    if (const Value* value = context_.find(name)) return *value;
    if (const Value* value = builtin_globals().find(name)) return *value;
    return Value::undefined(name);
  }

  CallArgs eval_arguments(const Expr& expr) {
    CallArgs args;
    for (const auto& item : expr.items) args.positional.push_back(eval(*item));
    for (const auto& [key, value] : expr.keyword) args.keyword.emplace_back(key, eval(*value));
    return args;
  }

  // A filter node's chain, innermost first; a null innermost object stands for `operand`
  // (block filters and `set x | f`).
  Value apply_filter_chain(const Expr& filter, const Value& operand) {
    Value input = !filter.object                              ? operand
                  : filter.object->kind == Expr::Kind::filter ? apply_filter_chain(*filter.object, operand)
                                                              : eval(*filter.object);
    if (!is_known_filter(filter.name)) throw EvalError(fmt::format("unknown filter '{}'", filter.name));
    return charged(apply_filter(filter.name, input, eval_arguments(filter)));
  }

  Value eval(const Expr& expr) {
    step();
    switch (expr.kind) {
      case Expr::Kind::literal:
        return expr.value;
      case Expr::Kind::name:
        return lookup(expr.name);
      case Expr::Kind::list:
      case Expr::Kind::tuple: {
        List items;
        for (const auto& item : expr.items) items.push_back(eval(*item));
        items.is_tuple = expr.kind == Expr::Kind::tuple;
        return Value(std::move(items));
      }
      case Expr::Kind::dict: {
        Dict dict;
        for (size_t k = 0; k + 1 < expr.items.size(); k += 2) {
          Value key = eval(*expr.items[k]);
          if (!key.is_string())
            throw EvalError(fmt::format("unsupported dict key of type '{}' (only strings)", key.type_name()));
          dict.set(key.as_string(), eval(*expr.items[k + 1]));
        }
        return Value(std::move(dict));
      }
      case Expr::Kind::attribute: {
        Value object = eval(*expr.object);
        if (object.is_undefined()) undefined_error(object);
        if (object.is_dict() || object.is_namespace()) {
          Value found = get_item(object, Value(expr.name));
          if (found.is_undefined()) return Value::undefined(expr.name);
          return found;
        }
        return Value::undefined(expr.name);
      }
      case Expr::Kind::subscript:
        return get_item(eval(*expr.object), eval(*expr.index));
      case Expr::Kind::slice:
        return slice_value(eval(*expr.object), expr.start ? eval(*expr.start) : Value(),
                           expr.stop ? eval(*expr.stop) : Value(), expr.step ? eval(*expr.step) : Value());
      case Expr::Kind::call:
        return eval_call(expr);
      case Expr::Kind::filter:
        return apply_filter_chain(expr, Value());
      case Expr::Kind::test: {
        Value subject = eval(*expr.object);
        if (!is_known_test(expr.name)) throw EvalError(fmt::format("unknown test '{}'", expr.name));
        return Value(apply_test(expr.name, subject, eval_arguments(expr)) != expr.negated);
      }
      case Expr::Kind::unary: {
        Value operand = eval(*expr.object);
        if (expr.name == "not") return Value(!operand.truthy());
        if (operand.is_undefined()) undefined_error(operand);
        if (!operand.is_number())
          throw EvalError(fmt::format("bad operand type for unary {}: '{}'", expr.name, operand.type_name()));
        if (expr.name == "+") return operand.is_bool() ? Value(integral(operand)) : operand;
        if (operand.is_float()) return Value(-operand.as_float());
        return arithmetic("-", Value(0), operand);
      }
      case Expr::Kind::binary: {
        Value left = eval(*expr.object);
        if (expr.name == "and") return left.truthy() ? eval(*expr.right) : left;
        if (expr.name == "or") return left.truthy() ? left : eval(*expr.right);
        Value right = eval(*expr.right);
        if (expr.name == "~") return charged(Value(to_str(left) + to_str(right)));
        return charged(arithmetic(expr.name, left, right));
      }
      case Expr::Kind::compare: {
        Value left = eval(*expr.object);
        for (size_t k = 0; k < expr.ops.size(); ++k) {
          Value right = eval(*expr.items[k]);
          const std::string& op = expr.ops[k];
          bool result = op == "=="       ? values_equal(left, right)
                        : op == "!="     ? !values_equal(left, right)
                        : op == "in"     ? contains(right, left)
                        : op == "not in" ? !contains(right, left)
                        : op == "<"      ? compare_values(left, right) < 0
                        : op == ">"      ? compare_values(left, right) > 0
                        : op == "<="     ? compare_values(left, right) <= 0
                                         : compare_values(left, right) >= 0;
          if (!result) return Value(false);
          left = std::move(right);
        }
        return Value(true);
      }
      case Expr::Kind::conditional:
        if (eval(*expr.condition).truthy()) return eval(*expr.object);
        return expr.else_value ? eval(*expr.else_value) : Value::undefined("else");
    }
    throw EvalError("unhandled expression");
  }

  Value eval_call(const Expr& expr) {
    const Expr& callee = *expr.object;
    if (callee.kind == Expr::Kind::attribute) {  // obj.method(...)
      Value object = eval(*callee.object);
      if (object.is_undefined()) undefined_error(object);
      CallArgs args = eval_arguments(expr);
      bool found = false;
      Value result = call_method(object, callee.name, args, found);
      if (found) return charged(std::move(result));
      Value attribute =
          object.is_dict() || object.is_namespace() ? get_item(object, Value(callee.name)) : Value();
      if (attribute.is_callable()) return charged(attribute.as_callable().call(args));
      throw EvalError(fmt::format("'{}' object has no method '{}'", object.type_name(), callee.name));
    }
    Value function = eval(callee);
    if (function.is_undefined()) undefined_error(function);
    if (!function.is_callable())
      throw EvalError(fmt::format("'{}' object is not callable", function.type_name()));
    return charged(function.as_callable().call(eval_arguments(expr)));
  }

  const Dict& context_;
  std::string& out_;
  const RenderLimits& limits_;
  uint64_t steps_ = 0;
  Frame root_;
  std::vector<Frame*> frames_;
  int call_depth_ = 0;
};

}  // namespace

std::string render_template(const Body& body, const Dict& context, const RenderLimits& limits) {
  std::string out;
  Interpreter(context, out, limits).run(body);
  return out;
}

}  // namespace tandem::jinja
