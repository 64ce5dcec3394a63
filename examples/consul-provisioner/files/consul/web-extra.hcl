service {
  meta = { team = "web" }
}
